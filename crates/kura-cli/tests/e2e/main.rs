//! End to end: the real service on loopback, driven through the client SDK, through raw HTTP
//! for attacks the SDK would never produce, and through the `kura` command line. One test
//! binary for everything that links DataFusion, to keep build time down; one module per area.

mod audit;
mod banks;
mod cli;
mod cluster;
mod common;
mod console;
mod dp;
mod hostile;
mod models;
mod protocol;
mod storage;
