//! An optional witness (`--checkpoint-witness`, `EUCORA_CHECKPOINT_WITNESS`): a URL to which each
//! signed checkpoint is POSTed before it is kept, as C2SP tlog-witness's `add-checkpoint`
//! request: `old <size>`, the consistency proof from that size (one base64 hash a line), an empty
//! line, then the signed checkpoint. A witness that speaks the protocol answers 200 with its
//! cosignature lines, 409 with the size it last cosigned (when `old` is not it), or 422 when the
//! proof does not verify: the log does not extend what it cosigned. Whatever a 200 carries is
//! kept beside the checkpoint (`checkpoint.witnessed`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use eucora_projections::merkle::Hash;

/// What a witness said to one checkpoint.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// 200: its answer (cosignature lines, where it speaks the protocol), to keep.
    Accepted(String),
    /// 409: it last cosigned a tree of this size, not the `old` size sent.
    AtSize(u64),
    /// 422: the proof does not verify against what it cosigned: the log was rewritten.
    Inconsistent(String),
    /// No answer, or one that says nothing of the log (400, 403, 404, 5xx...): the checkpoint
    /// is kept, and the next one is offered again.
    Unusable(String),
}

/// The witness, and the size it last accepted from this process.
pub struct Witness {
    url: reqwest::Url,
    http: reqwest::Client,
    /// `u64::MAX` until it has accepted one.
    accepted: AtomicU64,
}

/// How long one call to the witness may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a witness's answer that is read.
const MAX_ANSWER: usize = 16 * 1024;

impl Witness {
    pub fn new(url: &str) -> Result<Witness, String> {
        let url = reqwest::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                "--checkpoint-witness must be an http:// or https:// URL, such as \
                 https://witness.example/add-checkpoint"
                    .to_string()
            })?;
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| format!("cannot make the witness's HTTP client: {e}"))?;
        Ok(Witness {
            url,
            http,
            accepted: AtomicU64::new(u64::MAX),
        })
    }

    /// The witness as logs name it: its host, never its whole URL (which may carry a secret).
    pub fn host(&self) -> &str {
        self.url.host_str().unwrap_or("?")
    }

    /// The size it last accepted from this process, if it has.
    pub fn accepted(&self) -> Option<u64> {
        Some(self.accepted.load(Ordering::Acquire)).filter(|s| *s != u64::MAX)
    }

    /// Offers `note` (a checkpoint), with the proof that it extends the tree of `old` leaves.
    pub async fn add(&self, old: u64, proof: &[Hash], note: &str) -> Answer {
        let reply = self
            .http
            .post(self.url.clone())
            .body(request_body(old, proof, note))
            .send()
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                return Answer::Unusable(if e.is_timeout() {
                    "the witness did not answer in time".into()
                } else {
                    "the witness could not be reached".into()
                })
            }
        };
        let status = reply.status().as_u16();
        let body = read_some(reply).await;
        match status {
            200 => Answer::Accepted(body),
            409 => {
                body.trim().parse().map(Answer::AtSize).unwrap_or_else(|_| {
                    Answer::Unusable(format!("409 without a tree size: {body}"))
                })
            }
            422 => Answer::Inconsistent(body.trim().to_string()),
            other => Answer::Unusable(format!("answered {other}: {}", body.trim())),
        }
    }

    /// Remembers that the witness accepted a tree of `size` leaves.
    pub fn accept(&self, size: u64) {
        self.accepted.store(size, Ordering::Release);
    }
}

/// The body of an `add-checkpoint` request.
pub fn request_body(old: u64, proof: &[Hash], note: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut body = format!("old {old}\n");
    for hash in proof {
        body.push_str(&b64.encode(hash));
        body.push('\n');
    }
    body.push('\n');
    body.push_str(note);
    body
}

/// Up to [`MAX_ANSWER`] bytes of an answer, as text.
async fn read_some(mut reply: reqwest::Response) -> String {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = reply.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() >= MAX_ANSWER {
            body.truncate(MAX_ANSWER);
            break;
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_old_size_proof_lines_a_blank_line_and_the_note() {
        let note = "example.com/log\n3\nAAAA\n\n— example.com/log abcd\n";
        let body = request_body(2, &[[0u8; 32], [255u8; 32]], note);
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(lines[0], "old 2");
        assert_eq!(lines[1], format!("{}=", "A".repeat(43)));
        assert_eq!(lines[2], format!("{}8=", "/".repeat(42)));
        assert_eq!(lines[3], "");
        assert!(body.ends_with(note));
        assert_eq!(request_body(0, &[], note), format!("old 0\n\n{note}"));
    }

    #[test]
    fn only_a_web_address_is_a_witness() {
        assert!(Witness::new("https://w.example/add-checkpoint").is_ok());
        for bad in ["w.example", "ftp://w.example/x", "https://", "not a url"] {
            let e = Witness::new(bad).err().unwrap();
            assert!(e.contains("--checkpoint-witness"), "{bad}: {e}");
        }
        let w = Witness::new("https://user:secret@w.example/add").unwrap();
        assert_eq!(w.host(), "w.example");
        assert_eq!(w.accepted(), None);
        w.accept(7);
        assert_eq!(w.accepted(), Some(7));
    }
}
