//! The one driver of every fuzz property (the `fuzz` test modules next to the verifiers,
//! parsers and decoders they exercise), so that all of them share one way to run short
//! in CI and long on demand.
//!
//! - Short profile (default, what `cargo test` runs): each property runs a fixed number
//!   of cases from a seed derived from its name, so CI is fast and never flaky.
//! - Long profile: `ACCTOR_FUZZ_SECONDS=600` makes each property run batches of cases
//!   with fresh random seeds until that many seconds have passed, then print how many
//!   cases it ran. A failure names its seed; `ACCTOR_FUZZ_SEED=<hex>` replays that batch.
//!
//! proptest's runner catches panics inside a case, so "never panics" is checked by
//! simply calling the code under test; a panic fails the property with the shrunk input.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use sha2::{Digest, Sha256};

/// Runs `test` over values of `strategy`: `cases` of them in the short profile, batches
/// of `cases` until the deadline in the long one. Panics with the seed and the minimal
/// failing input when a case fails or panics.
pub(crate) fn fuzz<S>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: Debug,
{
    let run_batch = |seed: [u8; 32]| {
        let config = Config {
            cases,
            failure_persistence: None,
            // The long profile's batches must not stop at proptest's global reject cap.
            max_global_rejects: cases.saturating_mul(4),
            ..Config::default()
        };
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed);
        let mut runner = TestRunner::new_with_rng(config, rng);
        if let Err(failure) = runner.run(&strategy, &test) {
            panic!(
                "fuzz property {name} failed (replay with ACCTOR_FUZZ_SEED={}): {failure}",
                hex::encode(seed)
            );
        }
    };

    if let Some(seed) = env_seed() {
        run_batch(seed);
        return;
    }
    let Some(budget) = long_profile_budget() else {
        run_batch(Sha256::digest(name.as_bytes()).into());
        return;
    };
    let started = Instant::now();
    let mut batches: u64 = 0;
    while started.elapsed() < budget {
        run_batch(rand::random());
        batches += 1;
    }
    eprintln!(
        "fuzz {name}: {} cases in {:.1}s, no failure",
        batches * u64::from(cases),
        started.elapsed().as_secs_f64()
    );
}

/// `ACCTOR_FUZZ_SECONDS`: how long each property runs in the long profile.
fn long_profile_budget() -> Option<Duration> {
    let seconds: u64 = std::env::var("ACCTOR_FUZZ_SECONDS").ok()?.parse().ok()?;
    (seconds > 0).then(|| Duration::from_secs(seconds))
}

/// `ACCTOR_FUZZ_SEED`: the seed of one batch to replay, as a failure printed it.
fn env_seed() -> Option<[u8; 32]> {
    let text = std::env::var("ACCTOR_FUZZ_SEED").ok()?;
    let bytes = hex::decode(text.trim()).ok()?;
    bytes.try_into().ok()
}

/// The common mutations of a valid input: what a fuzzer does to bytes it knows are
/// accepted, so that the properties explore the neighbourhood of valid inputs and not
/// only random noise (which almost every parser rejects at its first byte).
#[derive(Clone, Debug)]
pub(crate) enum Mutation {
    /// XOR the byte at this index (modulo the length) with a non-zero mask.
    Flip(usize, u8),
    /// Set the byte at this index to a value.
    Set(usize, u8),
    /// Insert a byte before this index.
    Insert(usize, u8),
    /// Remove the byte at this index.
    Remove(usize),
    /// Keep only the first `n` bytes (modulo the length).
    Truncate(usize),
    /// Duplicate the bytes from this index to the end.
    DuplicateTail(usize),
}

impl Mutation {
    /// Applies the mutation to `bytes` (a no-op only on empty input for the index-based
    /// ones, or when `Set` writes the same byte).
    pub(crate) fn apply(&self, bytes: &mut Vec<u8>) {
        let len = bytes.len();
        match *self {
            Mutation::Flip(i, mask) if len > 0 => bytes[i % len] ^= mask.max(1),
            Mutation::Set(i, byte) if len > 0 => bytes[i % len] = byte,
            Mutation::Insert(i, byte) => bytes.insert(i % (len + 1), byte),
            Mutation::Remove(i) if len > 0 => {
                bytes.remove(i % len);
            }
            Mutation::Truncate(n) => bytes.truncate(n % (len + 1)),
            Mutation::DuplicateTail(i) if len > 0 => {
                let tail = bytes[i % len..].to_vec();
                bytes.extend_from_slice(&tail);
            }
            _ => {}
        }
    }
}

/// Any [`Mutation`].
pub(crate) fn mutation() -> impl Strategy<Value = Mutation> {
    use proptest::prelude::*;
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, m)| Mutation::Flip(i, m)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Truncate),
        any::<usize>().prop_map(Mutation::DuplicateTail),
    ]
}

/// One to four mutations, applied in order.
pub(crate) fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(mutation(), 1..=4)
}

/// `bytes` with `mutations` applied.
pub(crate) fn mutated(bytes: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for mutation in mutations {
        mutation.apply(&mut out);
    }
    out
}

/// Arbitrary JSON values, nested a few levels, with keys drawn partly from `keys` so
/// that objects hit the fields a parser looks for.
pub(crate) fn json_value(
    keys: &'static [&'static str],
) -> impl Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    use serde_json::Value;
    let key = prop_oneof![
        proptest::sample::select(keys).prop_map(str::to_owned),
        "[a-z_]{0,12}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,24}".prop_map(Value::String),
        proptest::sample::select(keys).prop_map(|k| Value::String(k.to_owned())),
    ];
    leaf.prop_recursive(4, 48, 8, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((key.clone(), inner), 0..8)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}
