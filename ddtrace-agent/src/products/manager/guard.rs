//! Isolation: one product's error or panic is logged with its name and never reaches the daemon
//! or the other products.

use std::{
    any::Any,
    panic::{self, AssertUnwindSafe},
};

use crate::products::ProductError;

/// Runs `operation` of `product`, turning a panic into [`ProductError::Panicked`] and logging any
/// failure. The product's state after a panic is whatever it was: the manager only stops
/// trusting it for what the failed operation was meant to do (e.g. a failed start leaves it out).
pub(super) fn guarded<T>(
    product: &'static str,
    operation: &'static str,
    call: impl FnOnce() -> Result<T, ProductError>,
) -> Result<T, ProductError> {
    let result = match panic::catch_unwind(AssertUnwindSafe(call)) {
        Ok(result) => result,
        Err(payload) => Err(ProductError::Panicked { product, operation, message: panic_message(payload.as_ref()) }),
    };
    if let Err(error) = &result {
        tracing::error!(product, operation, %error, "product operation failed; the other products go on");
    }
    result
}

/// The text `panic!` was given, when it was given text.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_string()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic without a message".to_string()
    }
}
