//! Protocol fronts. Each drives the session pipeline with its own wording and
//! relays bytes; none decides who may do what.

pub mod http;
pub mod postgres;
pub mod relay_runtimes;
pub mod ssh;
mod wake_up_cost;
