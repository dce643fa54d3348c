//! Kiln's coordinator: the gRPC services for clients and workers, the durable queue and
//! scheduler, leases, build records, log fan-out, projects and auth.

pub mod store;
