//! consul-template-compatible templates for wharf: Go's text/template language (from the
//! `gotmpl` crate) with consul-template's functions, rendered purely from a
//! [`TemplateData`] source, plus wharf's built-in nginx and haproxy templates.
//!
//! Layers: `data` (dependencies, records, the source trait), `query` (query strings),
//! `value` (records as template values, JSON), `funcs` (the function set), `engine`
//! (parse, check, render, positions), `catalog_data` (the in-process catalog as a source),
//! `builtin` (the shipped templates). Watching, writing files and running commands belong
//! to the binary.

mod catalog_data;
mod engine;
mod funcs;
mod query;
mod scope;
mod timefmt;
mod value;

pub mod builtin;
pub mod data;

pub use builtin::{Builtin, BuiltinParams};
pub use catalog_data::CatalogData;
pub use data::{DataValue, Dependency, StaticData, TemplateData};
pub use engine::{Rendered, Template, TemplateError};
pub use query::{ServiceQuery, parse_service};
pub use scope::{EnvLookup, RenderOptions};

#[cfg(test)]
mod tests;
