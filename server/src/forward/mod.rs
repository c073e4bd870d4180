//! Forwarders: the server delivers its trail itself, to syslog receivers, webhooks and files.
//!
//! Each forwarder is configuration → build → run: a [`ForwardSpec`] (from `--forward NAME=URL`
//! or a `[[forward]]` table) is checked and built into a sink when the server opens (every
//! unknown option, format or template variable fails the start, named), and runs as a
//! [`cursor::Cursor`] on the log once the server serves. Delivery is at-least-once: a
//! forwarder's position is saved in the store, with the log, only after its sink acknowledged,
//! and a restart resumes after it. [`status`] is what each shows of itself (`ListForwarders`).

pub mod cursor;
mod file;
pub mod item;
pub mod options;
pub mod status;
mod syslog;
mod tls;
mod webhook;

use std::time::Duration;

use audit_format::{Format, Template, TemplateOptions};
use audit_proto::pb::Filter;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::error::Error;
use crate::store::Store;
use cursor::{Cursor, Sink, SinkError};
use item::{Encoding, Item};
use options::{Options, Target};

/// Options every forwarder takes.
const COMMON_OPTIONS: &str =
    "format, template, no_value, start (beginning|now|SEQUENCE), batch, batch_bytes";

/// One configured forwarder.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardSpec {
    /// Its name: letters, digits, `-` and `_`, at most 64; names its position file.
    pub name: String,
    /// Where it sends, with options as query parameters.
    pub url: String,
    /// Options given besides the URL's (from a configuration file).
    pub options: Vec<(String, String)>,
    /// The entries it delivers (all by default).
    pub filter: Filter,
}

/// Parses `--forward NAME=URL`.
pub fn parse_flag(text: &str) -> Result<ForwardSpec, String> {
    let (name, url) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not NAME=URL"))?;
    check_name(name)?;
    options::parse_url(url)?;
    Ok(ForwardSpec {
        name: name.to_string(),
        url: url.to_string(),
        options: Vec::new(),
        filter: Filter::default(),
    })
}

fn check_name(name: &str) -> Result<(), String> {
    let valid = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "forwarder name `{name}`: 1 to 64 letters, digits, `-` or `_`"
        ))
    }
}

/// The sink of any forwarder.
enum AnySink {
    Syslog(syslog::SyslogSink),
    Webhook(Box<webhook::WebhookSink>),
    File(file::FileSink),
}

impl Sink for AnySink {
    async fn send(&mut self, items: &[Item]) -> Result<(), SinkError> {
        match self {
            AnySink::Syslog(sink) => sink.send(items).await,
            AnySink::Webhook(sink) => sink.send(items).await,
            AnySink::File(sink) => sink.send(items).await,
        }
    }
}

/// Forwarders built and positioned, not yet running.
pub struct Prepared<S> {
    cursors: Vec<Cursor<S, AnySink>>,
    described: status::Forwarders,
    stopping: CancellationToken,
}

/// Running forwarders.
pub struct Running {
    tasks: Vec<(String, JoinHandle<()>)>,
    stopping: CancellationToken,
}

/// Builds every forwarder of `specs` over `store`, which keeps their positions.
/// Fails, naming the forwarder and what is wrong, on a bad URL, option, format, template,
/// filter or certificate.
pub fn prepare<S: Store + Clone>(
    specs: &[ForwardSpec],
    store: &S,
    limits: &Limits,
    grace: Duration,
) -> Result<Prepared<S>, Error> {
    let stopping = CancellationToken::new();
    let mut cursors = Vec::new();
    let mut described = Vec::new();
    if specs.is_empty() {
        return Ok(Prepared {
            cursors,
            described: status::Forwarders::default(),
            stopping,
        });
    }
    // Who this server is when it claims a forwarder's lease in the store.
    let owner = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
    for (i, spec) in specs.iter().enumerate() {
        check_name(&spec.name).map_err(Error::Config)?;
        if specs[..i].iter().any(|other| other.name == spec.name) {
            return Err(Error::Config(format!(
                "two forwarders are named `{}`",
                spec.name
            )));
        }
        crate::validate::filter(&spec.filter, "filter", limits).map_err(|violations| {
            let what: Vec<String> = violations
                .iter()
                .map(|v| format!("{}: {}", v.field, v.description))
                .collect();
            Error::Config(format!("forwarder `{}`: {}", spec.name, what.join("; ")))
        })?;
        let (target, mut values) = options::parse_url(&spec.url)
            .map_err(|e| Error::Config(format!("forwarder `{}`: {e}", spec.name)))?;
        values.extend(spec.options.iter().cloned());
        let mut options = Options::new(&spec.name, values);
        let destination = target.destination();
        let (sink, known, format) = build_sink(target, &mut options)?;
        let start = options.take("start")?;
        let batch = options.parse("batch", 500usize)?.max(1);
        let batch_bytes = options.bytes("batch_bytes", 1 << 20)? as usize;
        let linger = match options.take("linger")? {
            None => Duration::ZERO,
            Some(text) => crate::config::parse_duration(&text)
                .map_err(|e| options.error(format!("option `linger`: {e}")))?,
        };
        options.finish(&format!("{COMMON_OPTIONS}, {known}"))?;
        // Where a forwarder without a saved position starts (see `Cursor::claim`).
        let (position, checkpoint_index) = match start.as_deref() {
            None | Some("beginning") => (0, 0),
            // Resolved when the forwarder starts, and saved at once.
            Some("now") => (u64::MAX, u64::MAX),
            Some(sequence) => match sequence.parse::<u64>() {
                Ok(sequence) => (sequence, 0),
                Err(_) => {
                    return Err(Error::Config(format!(
                        "forwarder `{}`: option `start`: `{sequence}` (beginning, now or a sequence)",
                        spec.name
                    )));
                }
            },
        };
        let stats = std::sync::Arc::<cursor::ForwarderStats>::default();
        cursors.push(Cursor {
            name: spec.name.clone(),
            store: store.clone(),
            sink,
            filter: spec.filter.clone(),
            owner: owner.clone(),
            position,
            checkpoint_index,
            batch,
            batch_bytes,
            linger,
            stopping: stopping.clone(),
            grace,
            stop_deadline: None,
            saved_checkpoint_index: None,
            stats: stats.clone(),
        });
        described.push(status::Described {
            name: spec.name.clone(),
            destination,
            format,
            stats,
        });
    }
    let described = status::Forwarders(std::sync::Arc::new(described));
    Ok(Prepared {
        cursors,
        described,
        stopping,
    })
}

/// The format of entries from the options `format`, `template` and `no_value`, and its name
/// (`default_name` for the sink's own).
fn entry_format(
    options: &mut Options,
    default_name: &str,
    default: Format,
) -> Result<(Format, String), Error> {
    let name = options.take("format")?;
    let template = options.take("template")?;
    let no_value = options.take("no_value")?;
    if no_value.is_some() && template.is_none() {
        return Err(options.error("option `no_value` goes with `template`"));
    }
    match (name, template) {
        (Some(_), Some(_)) => {
            Err(options.error("options `format` and `template` exclude each other"))
        }
        (None, Some(text)) => {
            let mut template_options = TemplateOptions::default();
            if let Some(no_value) = no_value {
                template_options.no_value = no_value;
            }
            Template::parse(&text, template_options)
                .map(|template| (Format::Template(template), "template".to_string()))
                .map_err(|e| options.error(format!("option `template`: {e}")))
        }
        (None, None) => Ok((default, default_name.to_string())),
        (Some(name), None) if name == "default" => Ok((default, default_name.to_string())),
        (Some(name), None) => match Format::named(&name) {
            Some(format) => Ok((format, name)),
            None => Err(options.error(format!(
                "unknown format `{name}` (default, {})",
                audit_format::NAMES.join(", ")
            ))),
        },
    }
}

/// The sink of `target`, the options it knows, and the name of its format.
fn build_sink(target: Target, options: &mut Options) -> Result<(AnySink, String, String), Error> {
    let json = |options: &mut Options| {
        let json = Format::named("logstash").expect("a named format");
        entry_format(options, "logstash", json)
    };
    let syslog_msg = |options: &mut Options| {
        entry_format(options, "default", audit_format::syslog::default_msg())
    };
    Ok(match target {
        Target::SyslogUdp(endpoint) => {
            let (msg, name) = syslog_msg(options)?;
            let message = syslog::message_options(options, msg, true)?;
            let sink = syslog::SyslogSink::new(endpoint, syslog::Transport::Udp, message);
            (AnySink::Syslog(sink), syslog::OPTIONS.to_string(), name)
        }
        Target::SyslogTcp(endpoint) => {
            let (msg, name) = syslog_msg(options)?;
            let message = syslog::message_options(options, msg, false)?;
            let sink = syslog::SyslogSink::new(endpoint, syslog::Transport::Tcp, message);
            (AnySink::Syslog(sink), syslog::OPTIONS.to_string(), name)
        }
        Target::SyslogTls(endpoint) => {
            let (msg, name) = syslog_msg(options)?;
            let message = syslog::message_options(options, msg, false)?;
            let tls = tls::client(options, &endpoint.host, &[])?;
            let sink = syslog::SyslogSink::new(endpoint, syslog::Transport::Tls(tls), message);
            let known = format!("{}, {}", syslog::OPTIONS, tls::OPTIONS);
            (AnySink::Syslog(sink), known, name)
        }
        Target::Http(endpoint, path) => {
            let (format, name) = json(options)?;
            let encoding = Encoding { format };
            let sink = webhook::WebhookSink::new(endpoint, path, None, encoding, options)?;
            let known = webhook::OPTIONS.to_string();
            (AnySink::Webhook(Box::new(sink)), known, name)
        }
        Target::Https(endpoint, path) => {
            let (format, name) = json(options)?;
            let encoding = Encoding { format };
            let tls = tls::client(options, &endpoint.host, &[b"http/1.1"])?;
            let sink = webhook::WebhookSink::new(endpoint, path, Some(tls), encoding, options)?;
            let known = format!("{}, {}", webhook::OPTIONS, tls::OPTIONS);
            (AnySink::Webhook(Box::new(sink)), known, name)
        }
        Target::File(path) => {
            let (format, name) = json(options)?;
            let encoding = Encoding { format };
            let sink = file::FileSink::new(path, encoding, options)?;
            (AnySink::File(sink), file::OPTIONS.to_string(), name)
        }
    })
}

impl<S: Store + Clone> Prepared<S> {
    /// Each forwarder's name and what it shows its metrics.
    pub fn stats(&self) -> Vec<(String, std::sync::Arc<cursor::ForwarderStats>)> {
        let stats = self
            .cursors
            .iter()
            .map(|c| (c.name.clone(), c.stats.clone()));
        stats.collect()
    }

    /// What `ListForwarders` shows of these forwarders, kept live once they run.
    pub fn list(&self) -> status::Forwarders {
        self.described.clone()
    }

    /// Starts every forwarder.
    pub fn start(self) -> Running {
        let tasks = self
            .cursors
            .into_iter()
            .map(|cursor| {
                tracing::info!(
                    forwarder = %cursor.name,
                    position = cursor.position,
                    "forwarder starting"
                );
                (cursor.name.clone(), tokio::spawn(cursor.run()))
            })
            .collect();
        Running {
            tasks,
            stopping: self.stopping,
        }
    }
}

impl Running {
    /// Lets every forwarder deliver what is committed for the grace period given to
    /// [`prepare`]; each then stops between batches, and resumes from its saved position at the
    /// next start. One whose receiver still holds a batch `hard_stop` later is stopped there
    /// (that batch may then be delivered again).
    pub async fn stop(self, hard_stop: Duration) {
        self.stopping.cancel();
        let deadline = tokio::time::Instant::now() + hard_stop;
        for (name, mut task) in self.tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                tracing::warn!(forwarder = %name, "forwarder had not caught up at shutdown; it resumes from its position at the next start");
            }
        }
    }
}
