//! Runs the SSE decoder vectors of `spec/sse/` — the same JSON every SDK runs — against
//! `longrun_proto::sse`, through both the incremental `Decoder` and the `decode` stream.
//!
//! The files are only read with serde here; their schema (`spec/sse/schema.json`) is what
//! other tooling validates against. What a schema cannot say — at least one vector exists,
//! descriptions are unique across files — is checked when loading.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use futures::executor::block_on;
use futures::{StreamExt, stream};
use longrun_proto::sse::{Decoder, SseItem, SseMessage, decode};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Vector {
    description: String,
    input: Vec<Chunk>,
    expected: Vec<Item>,
}

/// A text chunk stands for its UTF-8 bytes; raw bytes are for split or invalid sequences,
/// which a JSON string cannot hold.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Chunk {
    Text(String),
    Bytes(Vec<u8>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Text(text) => text.as_bytes(),
            Chunk::Bytes(bytes) => bytes,
        }
    }
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum Item {
    Message {
        event: String,
        data: String,
        id: String,
    },
    Retry {
        ms: u64,
    },
}

impl From<SseItem> for Item {
    fn from(item: SseItem) -> Self {
        match item {
            SseItem::Message(SseMessage { event, data, id }) => Item::Message { event, data, id },
            SseItem::Retry(ms) => Item::Retry { ms },
        }
    }
}

fn spec_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../spec/sse")
}

/// Every vector of every file, with its file name, after the checks a schema cannot make.
fn load_vectors() -> Vec<(String, Vector)> {
    let dir = spec_dir();
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("cannot read the SSE vectors in {}: {err}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .filter(|path| path.file_name().is_some_and(|name| name != "schema.json"))
        .collect();
    files.sort();

    let mut vectors = Vec::new();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
        let parsed: Vec<Vector> = serde_json::from_str(&text).unwrap_or_else(|err| {
            panic!("{name} is not a list of vectors as spec/sse/schema.json describes: {err}")
        });
        vectors.extend(parsed.into_iter().map(|vector| (name.clone(), vector)));
    }
    assert!(
        !vectors.is_empty(),
        "no SSE vectors found in {} — a passing run would prove nothing; \
         the vector files may have moved",
        dir.display()
    );

    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for (file, vector) in &vectors {
        if let Some(first) = seen.insert(&vector.description, file) {
            panic!(
                "the description {:?} appears twice (in {first} and {file}); \
                 descriptions name vectors in every SDK's failures, so make it unique",
                vector.description
            );
        }
    }
    vectors
}

fn run_decoder(vector: &Vector) -> Vec<Item> {
    let mut decoder = Decoder::new();
    vector
        .input
        .iter()
        .flat_map(|chunk| decoder.feed(chunk.bytes()))
        .map(Item::from)
        .collect()
}

fn run_decode_stream(vector: &Vector) -> Vec<Item> {
    let chunks = vector
        .input
        .iter()
        .map(|chunk| Ok::<_, Infallible>(chunk.bytes()));
    block_on(decode(stream::iter(chunks)).collect::<Vec<_>>())
        .into_iter()
        .map(|item| match item {
            Ok(item) => Item::from(item),
        })
        .collect()
}

#[test]
fn decoder_passes_every_vector() {
    let vectors = load_vectors();
    let mut failures = Vec::new();
    for (file, vector) in &vectors {
        for (how, got) in [
            ("Decoder::feed", run_decoder(vector)),
            ("decode", run_decode_stream(vector)),
        ] {
            if got != vector.expected {
                failures.push(format!(
                    "{file}: {:?} via {how}\n  expected {:?}\n  got      {:?}",
                    vector.description, vector.expected, got
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} SSE vectors failed:\n{}",
        failures.len(),
        vectors.len(),
        failures.join("\n")
    );
}

#[test]
fn stream_errors_pass_through_in_place() {
    let chunks = vec![
        Ok(&b"data: a\n"[..]),
        Err("connection reset"),
        Ok(&b"\n"[..]),
    ];
    let items = block_on(decode(stream::iter(chunks)).collect::<Vec<_>>());
    let message = SseMessage {
        event: "message".into(),
        data: "a".into(),
        id: String::new(),
    };
    assert_eq!(
        items,
        vec![Err("connection reset"), Ok(SseItem::Message(message))]
    );
}

/// Why `decode` is not a layer over `eventsource-stream` 0.2.3: the vectors it fails, as in
/// the module comment of `sse/decode.rs`. Like protobuf's conformance failure lists, a vector
/// that starts passing while still listed fails this test, so the list cannot go stale — if a
/// new version passes them all, the decoder can become a layer over it again.
#[test]
fn eventsource_stream_known_failures() {
    const KNOWN_FAILURES: &[&str] = &[
        // A retry in an event without data is never surfaced; several collapse into one.
        "retry alone, without data, is reported",
        "every retry is reported when its line is processed, before the message it sits in",
        "retry of zero, with leading zeros, and with no space after the colon",
        "retry on a complete line counts even if its event never ends; on a line without a line end it does not",
        // Today's longrun streams pass: their retry shares the first event's block (§7.1).
        // Only a retry before a blank line, as earlier versions sent it, or before no event
        // yet, is lost.
        "longrun stream of an earlier version: retry and keep-alive each followed by a blank line read the same",
        "longrun quiet stream: a retry line, then keep-alive lines and no event yet, dispatches nothing",
        // `u64::from_str` accepts "+1".
        "retry with anything but ASCII digits is ignored",
        // A final CR waits forever for a possible LF.
        "CR line endings, the last event ended by the final byte of the stream",
        "a lone CR in the last chunk is the blank line that dispatches",
        // A leading BOM panics: `&string[1..]` cuts into the 3-byte U+FEFF.
        "a leading BOM is stripped",
        "a leading BOM split byte by byte across chunks is stripped",
        "a second leading BOM is not stripped and becomes part of the field name",
        // Invalid UTF-8 stalls the stream, then ends it with an error instead of U+FFFD.
        "invalid UTF-8 becomes one U+FFFD per maximal subpart: ED A0 80 is three, a lone 80 one, truncated F0 9F one",
        "a truncated sequence at a chunk end, ended by a line end in the next chunk, becomes one U+FFFD",
        "an invalid byte in a field name makes the field unknown",
        "a truncated BOM at the start is not stripped but decoded as U+FFFD, spoiling the first field name",
    ];

    let vectors = load_vectors();
    let known: BTreeSet<&str> = KNOWN_FAILURES.iter().copied().collect();
    let mut failing = BTreeSet::new();
    for (_, vector) in &vectors {
        if run_eventsource_stream(vector).as_ref() != Ok(&vector.expected) {
            failing.insert(vector.description.as_str());
        }
    }
    let unlisted: Vec<_> = failing.difference(&known).collect();
    let now_passing: Vec<_> = known.difference(&failing).collect();
    assert!(
        unlisted.is_empty() && now_passing.is_empty(),
        "eventsource-stream no longer fails exactly the known vectors.\n\
         failing but not listed: {unlisted:#?}\n\
         listed but passing (remove them, and update sse/decode.rs): {now_passing:#?}"
    );
}

/// The library's events mapped to vector items: a retry it surfaced is reported just before
/// the message it arrived with. A panic or a stream error counts as a failure.
fn run_eventsource_stream(vector: &Vector) -> Result<Vec<Item>, String> {
    let chunks: Vec<Result<Vec<u8>, Infallible>> = vector
        .input
        .iter()
        .map(|chunk| Ok(chunk.bytes().to_vec()))
        .collect();
    let events = catch_unwind(AssertUnwindSafe(|| {
        block_on(eventsource_stream::EventStream::new(stream::iter(chunks)).collect::<Vec<_>>())
    }))
    .map_err(|_| "panicked".to_owned())?;
    let mut items = Vec::new();
    for event in events {
        let event = event.map_err(|err| err.to_string())?;
        if let Some(retry) = event.retry {
            items.push(Item::Retry {
                ms: retry.as_millis() as u64,
            });
        }
        items.push(Item::Message {
            event: event.event,
            data: event.data,
            id: event.id,
        });
    }
    Ok(items)
}
