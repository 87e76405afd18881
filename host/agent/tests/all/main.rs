//! The agent's one integration-test binary: the process executor against real processes
//! ([`process`]), and a real agent on the bus fencing off deposed masters ([`fencing`]).

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is the failure report

mod fencing;
mod process;
