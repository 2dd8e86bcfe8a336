//! Links, addresses, routes and network namespaces through rtnetlink.
