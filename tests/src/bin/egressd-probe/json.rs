//! The probe's output: one flat JSON object per action, built field by field (std only), and
//! the errno names its error lines carry.

use std::io;

/// A flat JSON object built field by field (std only; values are escaped strings). Its
/// `Display` is the line the probe prints.
pub struct Json {
    fields: Vec<String>,
}

impl Json {
    /// A line for `action` on `target`: its first two fields.
    pub fn new(action: &str, target: &str) -> Self {
        let mut json = Self { fields: Vec::new() };
        json.field("action", action);
        json.field("target", target);
        json
    }

    /// Adds `key` with the string `value`.
    pub fn field(&mut self, key: &str, value: &str) {
        self.fields.push(format!("\"{key}\":\"{}\"", escape(value)));
    }

    /// Adds `key` with `json`, written as is (a number, a boolean, an array).
    pub fn raw(&mut self, key: &str, json: &str) {
        self.fields.push(format!("\"{key}\":{json}"));
    }

    /// An error that is not an errno (the HTTPS actions).
    pub fn failed(mut self, stage: &str, message: &str) -> Self {
        self.field("result", "error");
        self.field("stage", stage);
        self.field("message", message);
        self
    }

    /// An error of the system call at `stage`: its `errno` name, `code` and message.
    pub fn error(mut self, stage: &str, e: &io::Error) -> Self {
        self.field("result", "error");
        self.field("stage", stage);
        self.field("errno", errno_name(e));
        self.raw("code", &e.raw_os_error().unwrap_or(0).to_string());
        self.field("message", &e.to_string());
        self
    }
}

impl std::fmt::Display for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{{{}}}", self.fields.join(","))
    }
}

/// `s` escaped for a JSON string (quotes, backslashes and control characters).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// The name of `e`'s errno (`EPERM`, ...), or `EOTHER`.
pub fn errno_name(e: &io::Error) -> &'static str {
    let Some(code) = e.raw_os_error() else {
        return "EOTHER";
    };
    match code {
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EINPROGRESS => "EINPROGRESS",
        libc::EAGAIN => "EAGAIN",
        libc::EINVAL => "EINVAL",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::ESOCKTNOSUPPORT => "ESOCKTNOSUPPORT",
        libc::ENOTCONN => "ENOTCONN",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOENT => "ENOENT",
        _ => "EOTHER",
    }
}
