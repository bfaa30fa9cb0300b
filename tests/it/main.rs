//! Integration tests: real Redis, real PostgreSQL, several meshgate pods and
//! real WebSocket clients. See `harness` for isolation.

mod client;
mod connect;
mod crash;
mod harness;
mod routing;
mod tap;
