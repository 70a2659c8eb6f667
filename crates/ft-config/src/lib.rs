//! ft-config
