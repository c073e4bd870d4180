//! A forwarder's URL and options: `syslog+udp://HOST:PORT`, `syslog+tcp://…`, `syslog+tls://…`,
//! `http://HOST:PORT/PATH`, `https://…`, `file:///PATH`, options as query parameters
//! (`?format=cef&batch=50`) or TOML keys. Each sink takes the options it knows; one left over
//! is an error naming it.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::error::Error;

/// Where a forwarder sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// RFC 5424 over UDP (RFC 5426).
    SyslogUdp(Endpoint),
    /// RFC 5424 over TCP, octet-counted (RFC 6587).
    SyslogTcp(Endpoint),
    /// RFC 5424 over TLS (RFC 5425).
    SyslogTls(Endpoint),
    /// HTTP POST to an endpoint and path.
    Http(Endpoint, String),
    /// HTTPS POST to an endpoint and path.
    Https(Endpoint, String),
    /// Lines appended to a file.
    File(PathBuf),
}

impl Target {
    /// Where it sends, as a URL without options or credentials (options may name secrets:
    /// those go in files or the environment, never here).
    pub fn destination(&self) -> String {
        match self {
            Target::SyslogUdp(e) => format!("syslog+udp://{}", e.authority()),
            Target::SyslogTcp(e) => format!("syslog+tcp://{}", e.authority()),
            Target::SyslogTls(e) => format!("syslog+tls://{}", e.authority()),
            Target::Http(e, path) => format!("http://{}{}", e.authority(), hidden(path)),
            Target::Https(e, path) => format!("https://{}{}", e.authority(), hidden(path)),
            Target::File(path) => format!("file://{}", path.display()),
        }
    }
}

/// A webhook's path as shown: left out, since some receivers take their token in it
/// (`/services/T0/B0/XXXX`).
fn hidden(path: &str) -> &'static str {
    if path.is_empty() || path == "/" {
        ""
    } else {
        "/…"
    }
}

/// A host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or IP address (without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
}

impl Endpoint {
    /// `host:port`, with brackets around an IPv6 address.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Splits `url` into its target and its query parameters (percent-decoded).
pub fn parse_url(url: &str) -> Result<(Target, Vec<(String, String)>), String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut options = Vec::new();
    for pair in query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        options.push((decode(key)?, decode(value)?));
    }
    let (scheme, rest) = base
        .split_once("://")
        .ok_or_else(|| format!("`{base}` has no scheme (syslog+udp://, syslog+tcp://, syslog+tls://, http://, https://, file://)"))?;
    let target = match scheme {
        "file" => {
            let path = decode(rest)?;
            if !path.starts_with('/') || path.ends_with('/') {
                return Err(format!(
                    "file URL needs an absolute file path: file:///var/log/audit.log, not `{url}`"
                ));
            }
            Target::File(PathBuf::from(path))
        }
        "syslog+udp" | "syslog+tcp" | "syslog+tls" => {
            let endpoint = endpoint(rest.trim_end_matches('/'), None)?;
            match scheme {
                "syslog+udp" => Target::SyslogUdp(endpoint),
                "syslog+tcp" => Target::SyslogTcp(endpoint),
                _ => Target::SyslogTls(endpoint),
            }
        }
        "http" | "https" => {
            let (authority, path) = match rest.find('/') {
                Some(at) => (&rest[..at], &rest[at..]),
                None => (rest, "/"),
            };
            let default_port = if scheme == "http" { 80 } else { 443 };
            let endpoint = endpoint(authority, Some(default_port))?;
            if scheme == "http" {
                Target::Http(endpoint, path.to_string())
            } else {
                Target::Https(endpoint, path.to_string())
            }
        }
        other => {
            return Err(format!(
                "unknown scheme `{other}` (syslog+udp, syslog+tcp, syslog+tls, http, https, file)"
            ));
        }
    };
    Ok((target, options))
}

fn endpoint(authority: &str, default_port: Option<u16>) -> Result<Endpoint, String> {
    if authority.contains('@') {
        // Not printed back: the part before `@` would be a secret.
        return Err(
            "credentials do not go in the URL (`user@host`): use the option auth_file or auth_env"
                .into(),
        );
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, rest) = rest.split_once(']').ok_or("unclosed `[` in the address")?;
        (host, rest.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("`{authority}` has no host"));
    }

    let port = match (port, default_port) {
        (Some(port), _) => port
            .parse()
            .map_err(|_| format!("`{port}` is not a port number"))?,
        (None, Some(port)) => port,
        (None, None) => return Err(format!("`{authority}` has no port")),
    };
    Ok(Endpoint {
        host: host.to_string(),
        port,
    })
}

/// Percent-decodes `text` (`%20` → space; `+` stays `+`).
fn decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape in `{text}`"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{text}` is not UTF-8 once decoded"))
}

/// The options of one forwarder, taken one by one by the parts that use them.
#[derive(Debug)]
pub struct Options {
    name: String,
    values: Vec<(String, String)>,
}

impl Options {
    /// The options `values` of forwarder `name`.
    pub fn new(name: &str, values: Vec<(String, String)>) -> Self {
        Self {
            name: name.to_string(),
            values,
        }
    }

    /// An error about this forwarder.
    pub fn error(&self, message: impl std::fmt::Display) -> Error {
        Error::Config(format!("forwarder `{}`: {message}", self.name))
    }

    /// Takes every value of `key`, in order.
    pub fn take_all(&mut self, key: &str) -> Vec<String> {
        let (taken, kept) = std::mem::take(&mut self.values)
            .into_iter()
            .partition(|(k, _)| k == key);
        self.values = kept;
        taken.into_iter().map(|(_, v)| v).collect()
    }

    /// Takes `key`, which may be given once.
    pub fn take(&mut self, key: &str) -> Result<Option<String>, Error> {
        let mut values = self.take_all(key);
        if values.len() > 1 {
            return Err(self.error(format!("option `{key}` is given more than once")));
        }
        Ok(values.pop())
    }

    /// Takes `key` and parses it, or gives `default`.
    pub fn parse<T: FromStr>(&mut self, key: &str, default: T) -> Result<T, Error>
    where
        T::Err: std::fmt::Display,
    {
        match self.take(key)? {
            None => Ok(default),
            Some(text) => text
                .parse()
                .map_err(|e| self.error(format!("option `{key}`: `{text}`: {e}"))),
        }
    }

    /// Takes `key` as a duration (`500ms`, `10s`, `2m`), or gives `default`.
    pub fn duration(&mut self, key: &str, default: Duration) -> Result<Duration, Error> {
        match self.take(key)? {
            None => Ok(default),
            Some(text) => crate::config::parse_duration(&text)
                .map_err(|e| self.error(format!("option `{key}`: {e}"))),
        }
    }

    /// Takes `key` as a size in bytes (`1048576`, `512K`, `10M`, `1G`), or gives `default`.
    pub fn bytes(&mut self, key: &str, default: u64) -> Result<u64, Error> {
        let Some(text) = self.take(key)? else {
            return Ok(default);
        };
        let (number, scale) = match text.strip_suffix(['K', 'k']) {
            Some(n) => (n, 1 << 10),
            None => match text.strip_suffix('M') {
                Some(n) => (n, 1 << 20),
                None => match text.strip_suffix('G') {
                    Some(n) => (n, 1 << 30),
                    None => (text.as_str(), 1),
                },
            },
        };
        number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(scale))
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                self.error(format!(
                    "option `{key}`: `{text}` is not a size like 1048576, 512K, 10M or 1G"
                ))
            })
    }

    /// Fails on the first option nobody took.
    pub fn finish(self, known: &str) -> Result<(), Error> {
        match self.values.first() {
            None => Ok(()),
            Some((key, _)) => Err(self.error(format!("unknown option `{key}` (options: {known})"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_targets_and_options() {
        let (target, options) =
            parse_url("syslog+tcp://127.0.0.1:514?format=cef&facility=local3").unwrap();
        assert_eq!(
            target,
            Target::SyslogTcp(Endpoint {
                host: "127.0.0.1".into(),
                port: 514
            })
        );
        assert_eq!(
            options,
            [
                ("format".into(), "cef".into()),
                ("facility".into(), "local3".into())
            ]
        );
        let (target, _) = parse_url("https://[::1]/hook/a").unwrap();
        assert_eq!(
            target,
            Target::Https(
                Endpoint {
                    host: "::1".into(),
                    port: 443
                },
                "/hook/a".into()
            )
        );
        let (target, options) = parse_url("file:///var/log/a%20b.log?header=X-A:%201").unwrap();
        assert_eq!(target, Target::File("/var/log/a b.log".into()));
        assert_eq!(options[0].1, "X-A: 1");
        for bad in [
            "syslog+udp://host",
            "ftp://x:1",
            "file://relative",
            "no-scheme",
            "http://:80/",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn destinations_leave_out_options_and_credentials_are_refused() {
        let (target, _) = parse_url("https://[::1]/hook/a?auth_env=TOKEN&header=X:%201").unwrap();
        assert_eq!(target.destination(), "https://[::1]:443/…");
        let (target, _) = parse_url("syslog+udp://10.0.0.1:514?format=cef").unwrap();
        assert_eq!(target.destination(), "syslog+udp://10.0.0.1:514");
        let error = parse_url("https://admin:s3cret@siem.example/hook").unwrap_err();
        assert!(
            error.contains("auth_file") && !error.contains("s3cret"),
            "{error}"
        );
    }

    #[test]
    fn an_unknown_option_is_named() {
        let mut options = Options::new(
            "siem",
            vec![
                ("batch".into(), "5".into()),
                ("colour".into(), "red".into()),
            ],
        );
        assert_eq!(options.parse("batch", 1usize).unwrap(), 5);
        let error = options.finish("batch").unwrap_err().to_string();
        assert!(
            error.contains("forwarder `siem`: unknown option `colour`"),
            "{error}"
        );
        let mut options = Options::new("f", vec![("max_size".into(), "10M".into())]);
        assert_eq!(options.bytes("max_size", 1).unwrap(), 10 << 20);
    }
}
