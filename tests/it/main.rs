//! Integration tests: real Redis, real PostgreSQL, several meshgate pods and
//! real WebSocket clients. See `harness` for isolation.

mod admin;
mod api;
mod balancer;
mod client;
mod cluster;
mod connect;
mod crash;
mod daemon_rows;
mod delivery;
mod events;
mod files;
mod git_results;
mod harness;
mod lifecycle;
mod messages;
mod outages;
mod page;
mod resources;
mod resume;
mod routing;
mod sentinel;
mod tap;
mod tls;
