//! Opaque query page tokens: the last sequence returned, bound to the filter and order that
//! produced it so a token cannot be replayed with another query.

use audit_proto::pb::{Filter, Order};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message;
use sha2::{Digest, Sha256};

/// Encodes the position after `sequence` for `filter` and `order`.
pub fn encode(sequence: u64, filter: &Filter, order: Order) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "v1.{sequence}.{}.{}",
        order as i32,
        fingerprint(filter)
    ))
}

/// Decodes a token made by [`encode`] for the same filter and order; `None` if it is not one.
pub fn decode(token: &str, filter: &Filter, order: Order) -> Option<u64> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(token).ok()?).ok()?;
    let mut parts = text.split('.');
    let (Some("v1"), Some(sequence), Some(token_order), Some(print), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    if token_order != (order as i32).to_string() || print != fingerprint(filter) {
        return None;
    }
    sequence.parse().ok()
}

/// A short digest of the filter; its encoding is deterministic since maps are ordered.
fn fingerprint(filter: &Filter) -> String {
    let digest = Sha256::digest(filter.encode_to_vec());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_only_with_the_same_query() {
        let filter = Filter {
            source: "billing".into(),
            ..Default::default()
        };
        let token = encode(42, &filter, Order::Descending);
        assert_eq!(decode(&token, &filter, Order::Descending), Some(42));
        assert_eq!(decode(&token, &filter, Order::Ascending), None);
        assert_eq!(decode(&token, &Filter::default(), Order::Descending), None);
        assert_eq!(decode("garbage", &filter, Order::Descending), None);
    }

    /// Page tokens round-trip, stay bound to their filter and order, and any other text is
    /// refused without a panic.
    mod props {
        use super::*;
        use proptest::prelude::*;

        fn filter() -> impl Strategy<Value = Filter> {
            (
                "\\PC{0,12}",
                "\\PC{0,12}",
                prop::collection::btree_map("\\PC{0,4}", "\\PC{0,4}", 0..3),
            )
                .prop_map(|(source, method, labels)| Filter {
                    source,
                    method,
                    labels: labels.into_iter().collect(),
                    ..Default::default()
                })
        }

        fn order() -> impl Strategy<Value = Order> {
            prop_oneof![
                Just(Order::Ascending),
                Just(Order::Descending),
                Just(Order::Unspecified)
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn tokens_round_trip(sequence in any::<u64>(), filter in filter(), order in order()) {
                let token = encode(sequence, &filter, order);
                prop_assert_eq!(decode(&token, &filter, order), Some(sequence));
            }

            #[test]
            fn tokens_are_bound_to_their_query(
                sequence in any::<u64>(),
                filter in filter(),
                other in filter(),
                order in order(),
            ) {
                let token = encode(sequence, &filter, order);
                if other != filter {
                    prop_assert_eq!(decode(&token, &other, order), None);
                }
                let flipped = match order {
                    Order::Descending => Order::Ascending,
                    _ => Order::Descending,
                };
                prop_assert_eq!(decode(&token, &filter, flipped), None);
            }

            #[test]
            fn other_text_is_refused(token in prop_oneof!["\\PC{0,64}", "[A-Za-z0-9_-]{0,80}"]) {
                let decoded = decode(&token, &Filter::default(), Order::Ascending);
                if let Some(sequence) = decoded {
                    prop_assert_eq!(encode(sequence, &Filter::default(), Order::Ascending), token);
                }
            }
        }
    }
}
