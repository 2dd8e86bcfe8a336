//! Subnets and addresses.
