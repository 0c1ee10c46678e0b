//! Recordings: every raw WebSocket frame and REST depth body the adapter receives, with its
//! receive time, gzip-compressed, so an incident can be replayed through the real parser
//! and the whole pipeline (`meltica record` / `meltica replay`).
//!
//! The file is gzip over JSON lines: a header `{"meltica":"recording","version":1,
//! "config":"<effective YAML>","startedMs":…}`, then one line per input:
//! `{"t":<receive time, ns since the epoch>,"ws":<connection>,"d":"<frame text>"}` or
//! `{"t":…,"depth":"BTC-USDT","d":"<response body>"}`.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Sender, bounded};
use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};

/// Inputs waiting for the writer. When full, receiving threads wait: a recording is only
/// useful if it is complete.
const QUEUE: usize = 1 << 16;

/// One recorded input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Input {
    /// Receive time, nanoseconds since the Unix epoch.
    pub t: u64,
    /// The WebSocket connection a frame came on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ws: Option<usize>,
    /// The instrument a depth snapshot body is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<String>,
    /// The frame text or response body.
    pub d: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    meltica: String,
    version: u32,
    config: String,
    started_ms: i64,
}

/// Why a recording could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a meltica recording: {reason}")]
    Format { path: String, reason: String },
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The adapter's handle on a recording; cheap to clone into every receiving thread.
#[derive(Clone)]
pub struct Recorder {
    tx: Sender<Input>,
    recorded: Arc<AtomicU64>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("recorded", &self.recorded.load(Ordering::Relaxed))
            .finish()
    }
}

impl Recorder {
    /// A frame received on WebSocket connection `conn`.
    pub fn ws(&self, conn: usize, text: &str) {
        self.send(Input {
            t: now_ns(),
            ws: Some(conn),
            depth: None,
            d: text.to_owned(),
        });
    }

    /// A `/api/v3/depth` body received for `instrument`.
    pub fn depth(&self, instrument: &str, body: &str) {
        self.send(Input {
            t: now_ns(),
            ws: None,
            depth: Some(instrument.to_owned()),
            d: body.to_owned(),
        });
    }

    fn send(&self, input: Input) {
        if self.tx.send(input).is_ok() {
            self.recorded.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Inputs recorded so far.
    pub fn recorded(&self) -> u64 {
        self.recorded.load(Ordering::Relaxed)
    }
}

/// The writing side: a thread compressing inputs into the file.
pub struct RecordingWriter {
    recorder: Recorder,
    handle: Option<JoinHandle<Result<u64, RecordingError>>>,
}

impl RecordingWriter {
    /// Creates `path` and starts the `meltica-record` thread. `config` is the effective
    /// configuration (YAML), stored so a replay runs with the same routes and settings.
    pub fn create(path: &Path, config: &str) -> Result<RecordingWriter, RecordingError> {
        let name = path.display().to_string();
        let io = move |source| RecordingError::Io {
            path: name.clone(),
            source,
        };
        let io = &io;
        let file = File::create(path).map_err(io)?;
        let name = path.display().to_string();
        let mut out = GzEncoder::new(BufWriter::with_capacity(1 << 16, file), Compression::fast());
        let header = Header {
            meltica: "recording".into(),
            version: 1,
            config: config.to_owned(),
            started_ms: crate::clock::wall_ms(),
        };
        serde_json::to_writer(&mut out, &header).map_err(|e| io(e.into()))?;
        out.write_all(b"\n").map_err(io)?;
        let (tx, rx) = bounded::<Input>(QUEUE);
        let handle = std::thread::Builder::new()
            .name("meltica-record".into())
            .spawn(move || {
                let io = |source| RecordingError::Io {
                    path: name.clone(),
                    source,
                };
                let mut n = 0u64;
                for input in rx {
                    serde_json::to_writer(&mut out, &input).map_err(|e| io(e.into()))?;
                    out.write_all(b"\n").map_err(&io)?;
                    n += 1;
                }
                out.finish().and_then(|mut w| w.flush()).map_err(&io)?;
                Ok(n)
            })
            .map_err(|source| RecordingError::Io {
                path: path.display().to_string(),
                source,
            })?;
        Ok(RecordingWriter {
            recorder: Recorder {
                tx,
                recorded: Arc::new(AtomicU64::new(0)),
            },
            handle: Some(handle),
        })
    }

    pub fn recorder(&self) -> Recorder {
        self.recorder.clone()
    }

    /// Waits for every input sent so far to be written, once all recorders are dropped,
    /// and closes the file. Returns the number of inputs written.
    pub fn finish(mut self) -> Result<u64, RecordingError> {
        let Some(h) = self.handle.take() else {
            return Ok(0);
        };
        drop(self.recorder);
        h.join().unwrap_or(Ok(0))
    }
}

/// A recording opened for replay.
pub struct Recording {
    /// The effective configuration it was recorded with (YAML).
    pub config: String,
    pub started_ms: i64,
    lines: std::io::Lines<BufReader<MultiGzDecoder<File>>>,
    path: String,
}

impl Recording {
    pub fn open(path: &Path) -> Result<Recording, RecordingError> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|source| RecordingError::Io {
            path: name.clone(),
            source,
        })?;
        let mut lines = BufReader::with_capacity(1 << 16, MultiGzDecoder::new(file)).lines();
        let format = |reason: String| RecordingError::Format {
            path: name.clone(),
            reason,
        };
        let first = lines
            .next()
            .ok_or_else(|| format("empty".into()))?
            .map_err(|e| format(e.to_string()))?;
        let header: Header = serde_json::from_str(&first).map_err(|e| format(e.to_string()))?;
        if header.meltica != "recording" || header.version != 1 {
            return Err(format(format!(
                "unsupported header {:?} version {}",
                header.meltica, header.version
            )));
        }
        Ok(Recording {
            config: header.config,
            started_ms: header.started_ms,
            lines,
            path: name,
        })
    }
}

impl Iterator for Recording {
    type Item = Result<Input, RecordingError>;

    fn next(&mut self) -> Option<Self::Item> {
        let line = self.lines.next()?;
        Some(
            line.map_err(|e| RecordingError::Format {
                path: self.path.clone(),
                reason: e.to_string(),
            })
            .and_then(|l| {
                serde_json::from_str(&l).map_err(|e| RecordingError::Format {
                    path: self.path.clone(),
                    reason: format!("bad line: {e}"),
                })
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_round_trip_through_the_file() {
        let path = std::env::temp_dir().join(format!("meltica-rec-{}.gz", std::process::id()));
        let w = RecordingWriter::create(&path, "instruments: [BTC-USDT]\n").unwrap();
        let r = w.recorder();
        r.ws(0, r#"{"stream":"btcusdt@trade","data":{"e":"trade"}}"#);
        r.depth("BTC-USDT", r#"{"lastUpdateId":1,"bids":[],"asks":[]}"#);
        drop(r);
        assert_eq!(w.finish().unwrap(), 2);
        let rec = Recording::open(&path).unwrap();
        assert_eq!(rec.config, "instruments: [BTC-USDT]\n");
        let inputs: Vec<Input> = rec.map(Result::unwrap).collect();
        assert_eq!(inputs.len(), 2);
        assert_eq!(inputs[0].ws, Some(0));
        assert_eq!(inputs[1].depth.as_deref(), Some("BTC-USDT"));
        assert!(inputs[0].t <= inputs[1].t);
        let _ = std::fs::remove_file(&path);
        assert!(matches!(
            Recording::open(Path::new("/nonexistent/x.gz")),
            Err(RecordingError::Io { .. })
        ));
    }
}
