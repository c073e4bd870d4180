//! Entries and their parts as JSON values, for the JSON layouts.

use prost_types::value::Kind;
use serde_json::{Map, Value as Json};

/// A `google.protobuf.Value` as JSON. Non-finite numbers (which JSON cannot hold) become null.
pub fn value_to_json(value: &prost_types::Value) -> Json {
    match &value.kind {
        Some(Kind::NullValue(_)) | None => Json::Null,
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(*n).map_or(Json::Null, Json::Number)
        }
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(list)) => Json::Array(list.values.iter().map(value_to_json).collect()),
    }
}

/// A `google.protobuf.Struct` as a JSON object.
pub fn struct_to_json(value: &prost_types::Struct) -> Json {
    Json::Object(
        value
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect::<Map<_, _>>(),
    )
}
