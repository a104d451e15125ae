//! Route templates: an application's routing table read from its memory (read-only), and the
//! rule that serves each request, so its server span says `GET /users/<int:uid>` as an
//! in-process tracer would. Flask (werkzeug) for now; Django and Starlette keep the quantized
//! resource.

pub mod flask;
pub mod werkzeug_rule;
