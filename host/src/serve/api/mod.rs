//! `/api/v1`: one module per resource, holding its wire types and handler
//! (see STYLE.md). Only `health` exists so far.

pub mod health;
