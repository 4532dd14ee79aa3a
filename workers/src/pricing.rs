//! Cost of a request in nano-USD: the shared price table (`sluice_schemas::pricing`, which
//! the ingress also uses to price budget reservations).

pub use sluice_schemas::pricing::PriceTable;
