//! The live page served at `/` (being written).

use poem::{handler, web::Html};

/// The page.
#[handler]
pub fn index() -> Html<&'static str> {
    Html("<!doctype html><title>meshgate</title><p>meshgate</p>")
}
