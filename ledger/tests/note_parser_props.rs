//! Properties of the checkpoint and signed-note parsers, through the public API only: they
//! never panic on any text, a checkpoint's body and a signed note round-trip, and a note opens
//! only with the key that signed it and only unchanged.

use audit_ledger::{Checkpoint, PublicKey, SigningKey};
use proptest::prelude::*;

prop_compose! {
    fn checkpoint()(
        origin in "[a-z][a-z0-9.-]{0,15}",
        size in any::<u64>(),
        root in any::<[u8; 32]>(),
        chain in any::<[u8; 32]>(),
        time in any::<u64>(),
        max_unsigned in any::<Option<u64>>(),
        pruned_seed in any::<u64>(),
    ) -> Checkpoint {
        // Any horizon from 0 to the size.
        let pruned = pruned_seed % size.saturating_add(1);
        Checkpoint { origin, size, root, chain, time, max_unsigned, pruned }
    }
}

/// Text shaped like notes and keys, and anything else.
fn note_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,120}",
        "[a-z]{1,8}\n[0-9]{1,4}\n[A-Za-z0-9+/=]{0,44}\nchain [A-Za-z0-9+/=]{0,44}\ntime [0-9]{1,5}\n(max-unsigned [0-9]{1,5}\n)?(pruned [0-9]{1,4}\n)?(\n\u{2014} [a-z]{1,8} [A-Za-z0-9+/=]{0,90}\n)?",
        "(PRIVATE\\+KEY\\+)?[a-z]{0,8}\\+[0-9a-f]{0,8}\\+[A-Za-z0-9+/=]{0,60}",
    ]
}

fn key() -> SigningKey {
    SigningKey::generate("audit-log").expect("a valid name")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parsers_never_panic(text in note_like()) {
        let _ = Checkpoint::parse_body(&text);
        let _ = Checkpoint::parse_unverified(&text);
        let _ = PublicKey::from_text(&text);
        let _ = SigningKey::from_text(&text);
        let _ = key().public_key().open(&text);
    }

    #[test]
    fn bodies_round_trip(checkpoint in checkpoint()) {
        prop_assert_eq!(Checkpoint::parse_body(&checkpoint.body()).unwrap(), checkpoint);
    }

    #[test]
    fn signed_notes_open_only_unchanged_and_with_their_key(
        checkpoint in checkpoint(),
        flip in any::<prop::sample::Index>(),
    ) {
        let signer = key();
        let note = signer.sign(&checkpoint);
        prop_assert_eq!(signer.public_key().open(&note).unwrap(), checkpoint.clone());
        prop_assert_eq!(Checkpoint::parse_unverified(&note).unwrap(), checkpoint);
        prop_assert!(key().public_key().open(&note).is_err(), "another key");
        let public = signer.public_key();
        prop_assert_eq!(PublicKey::from_text(&public.to_text()).unwrap().to_text(), public.to_text());

        // Any one changed byte of the signed text is caught.
        let body_len = note.find('\u{2014}').unwrap();
        let at = flip.index(body_len);
        let mut bytes = note.into_bytes();
        bytes[at] ^= 0x01;
        if let Ok(changed) = String::from_utf8(bytes) {
            prop_assert!(public.open(&changed).is_err(), "{changed:?}");
        }
    }
}
