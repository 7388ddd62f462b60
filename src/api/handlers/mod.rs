//! The handlers, one file per resource. Each handler trusts the guard for authentication and
//! the route's permission, and checks territory (`guard::in_territory`) and its own input.

pub mod appliance;
pub mod attachments;
pub mod auth;
pub mod cases;
pub mod clinical;
pub mod grants;
pub mod handoff;
pub mod health;
pub mod patients;
pub mod record;
pub mod review;
pub mod stream;
pub mod users;
