//! ft-lora
