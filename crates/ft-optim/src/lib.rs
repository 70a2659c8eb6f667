//! ft-optim
