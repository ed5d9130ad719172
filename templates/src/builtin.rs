//! wharf's built-in templates (`builtin/*.ctmpl`): a complete nginx.conf and haproxy.cfg
//! for the catalog's services, used by `wharf export` and available to `--template`.
//! They are ordinary consul-template templates; their settings arrive on dot.

use std::collections::BTreeMap;

use crate::engine::{Template, TemplateError};

/// A built-in template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Builtin {
    Nginx,
    Haproxy,
}

/// Settings of the built-in templates (`wharf export nginx --listen 8080 --service web`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltinParams {
    /// nginx `listen` / haproxy `bind` value: a port or address:port.
    pub listen: String,
    /// Only this service, and the default route to it; `None`: every service.
    pub service: Option<String>,
    /// Host names `<service>.<domain>` route to that service.
    pub domain: String,
}

impl Default for BuiltinParams {
    fn default() -> Self {
        BuiltinParams { listen: "80".into(), service: None, domain: "localhost".into() }
    }
}

impl BuiltinParams {
    /// The values for `.` (`.Listen`, `.Service`, `.Domain`).
    pub fn to_dot(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("Listen".to_string(), self.listen.clone()),
            ("Service".to_string(), self.service.clone().unwrap_or_default()),
            ("Domain".to_string(), self.domain.clone()),
        ])
    }
}

impl Builtin {
    pub const ALL: [Builtin; 2] = [Builtin::Nginx, Builtin::Haproxy];

    /// `nginx` or `haproxy`.
    pub fn from_name(name: &str) -> Option<Builtin> {
        match name {
            "nginx" | "nginx.conf" => Some(Builtin::Nginx),
            "haproxy" | "haproxy.cfg" => Some(Builtin::Haproxy),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Builtin::Nginx => "nginx",
            Builtin::Haproxy => "haproxy",
        }
    }

    /// The template's file name in `templates/builtin/`.
    pub fn file_name(self) -> &'static str {
        match self {
            Builtin::Nginx => "nginx.conf.ctmpl",
            Builtin::Haproxy => "haproxy.cfg.ctmpl",
        }
    }

    pub fn source(self) -> &'static str {
        match self {
            Builtin::Nginx => include_str!("../builtin/nginx.conf.ctmpl"),
            Builtin::Haproxy => include_str!("../builtin/haproxy.cfg.ctmpl"),
        }
    }

    pub fn template(self) -> Result<Template, TemplateError> {
        Template::parse(&format!("builtin/{}", self.file_name()), self.source())
    }
}
