//! The nftables table of gaffer.
