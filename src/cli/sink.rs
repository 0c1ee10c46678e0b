//! `--emit ndjson`: every published event to stdout, one JSON object per line, lossless
//! (a `block` subscription), written through a buffer flushed per batch and at the end.

use std::io::Write;
use std::thread::JoinHandle;

use crate::bus::Subscription;

/// Spawns the writer; it ends when the bus closes and the queue is drained.
pub fn spawn_stdout(sub: Subscription) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("meltica-ndjson".into())
        .spawn(move || {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
            let mut line = Vec::with_capacity(1024);
            while let Some(ev) = sub.recv() {
                let mut next = Some(ev);
                while let Some(ev) = next {
                    line.clear();
                    ev.write_json(&mut line);
                    line.push(b'\n');
                    if out.write_all(&line).is_err() {
                        return;
                    }
                    next = sub.try_recv().ok();
                }
                if out.flush().is_err() {
                    return;
                }
            }
            let _ = out.flush();
        })
        .expect("spawn the ndjson writer")
}
