//! Drawbridge: a privileged access gateway.
//!
//! Every connection passes the same five stages, owned by [`session::Pipeline`]:
//! identify ([`identity`]) → authorize ([`policy`] + [`access`]) → mint a short-lived
//! upstream credential ([`credentials`]) → connect (the protocol's upstream, e.g.
//! [`proxy::ssh`]) → relay and record ([`recording`]). `ARCHITECTURE.md` is the map.

pub mod access;
pub mod api;
pub mod cert_check;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod gateway;
pub mod identity;
pub mod keys;
pub mod notify;
pub mod policy;
pub mod proxy;
pub mod recording;
pub mod secret;
pub mod session;
pub mod store;
pub mod time;
