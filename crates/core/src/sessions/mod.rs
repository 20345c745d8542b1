//! Sessions across nodes: the record of each session and its state machine, which node
//! owns it, and the bus that tells every node about a change at once.

pub mod bus;
pub mod ownership;
pub mod records;
pub mod state;
