//! What a forwarder delivers (entries and signed checkpoints) and how the line and JSON sinks
//! write them.

use audit_format::Format;
use audit_format::json_layouts::{self, to_line};
use audit_proto::pb::AuditEntry;
use serde_json::{Value as Json, json};

/// One message for a sink.
// Nearly every item is an entry: boxing them to shrink the rare checkpoint would cost more.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Item {
    /// An entry of the log.
    Entry(AuditEntry),
    /// A signed checkpoint, delivered after the entries it covers.
    Checkpoint(Checkpoint),
}

/// A signed checkpoint as forwarders deliver it.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Its position among checkpoints, from 1.
    pub index: u64,
    /// How many entries it covers.
    pub size: u64,
    /// When it was signed, in seconds since the Unix epoch.
    pub time: u64,
    /// The signed note, verbatim.
    pub note: String,
}

impl Checkpoint {
    /// The checkpoint as a JSON object: `type`, `index`, `size`, `time`, `note`.
    pub fn to_json(&self) -> Json {
        json!({
            "type": "checkpoint",
            "index": self.index,
            "size": self.size,
            "time": self.time,
            "note": self.note,
        })
    }
}

/// How the file and webhook sinks write items: entries in the configured format, checkpoints
/// as [`Checkpoint::to_json`].
#[derive(Debug, Clone)]
pub struct Encoding {
    /// The format of entries.
    pub format: Format,
}

impl Encoding {
    /// `item` as one line (no line break): entries in the format, checkpoints as JSON.
    pub fn line(&self, item: &Item) -> String {
        match item {
            Item::Entry(entry) => self.format.render_to_string(entry),
            Item::Checkpoint(checkpoint) => to_line(&checkpoint.to_json()),
        }
    }

    /// `item` as JSON: entries of a JSON format as that format's object; entries of a line
    /// format as `{"sequence", "id", "message"}` with the line as `message`.
    pub fn json(&self, item: &Item) -> Json {
        let entry = match item {
            Item::Checkpoint(checkpoint) => return checkpoint.to_json(),
            Item::Entry(entry) => entry,
        };
        match &self.format {
            Format::Logstash => json_layouts::logstash(entry),
            Format::Ecs => json_layouts::ecs(entry),
            Format::Ocsf => json_layouts::ocsf(entry),
            // The proto3 JSON line, as an object (numbers read back exactly).
            Format::Json => serde_json::from_str(&self.format.render_to_string(entry))
                .expect("a JSON format renders JSON"),
            format => json!({
                "sequence": entry.sequence,
                "id": entry.id,
                "message": format.render_to_string(entry),
            }),
        }
    }

    /// `item` as one line of JSON, as [`Encoding::json`] writes it (an entry in proto3 JSON
    /// exactly as the `json` format renders it, its fields in their order).
    pub fn json_line(&self, item: &Item) -> String {
        match (&self.format, item) {
            (Format::Json, Item::Entry(entry)) => self.format.render_to_string(entry),
            _ => to_line(&self.json(item)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_entries_travel_as_their_proto3_json_line() {
        let encoding = Encoding {
            format: Format::named("json").unwrap(),
        };
        let entry = AuditEntry {
            sequence: 7,
            id: "id-7".into(),
            source: "kms\n\u{2028}".into(),
            ..Default::default()
        };
        let line = encoding.json_line(&Item::Entry(entry.clone()));
        assert_eq!(line, audit_format::proto_json::to_json(&entry).unwrap());
        assert_eq!(
            line,
            r#"{"id":"id-7","sequence":"7","source":"kms\n\u2028"}"#
        );
        assert_eq!(encoding.json(&Item::Entry(entry))["sequence"], "7");
    }
}
