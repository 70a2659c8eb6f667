//! ft-data
