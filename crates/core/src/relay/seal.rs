//! Sealed relay frames: with a secret shared by every node, each frame is encrypted and
//! authenticated (ChaCha20-Poly1305), bound to its sender, its channel and the time it was
//! sealed, and accepted at most once.
//!
//! ```text
//! '#' | kind id seq (the frame's header) | sealed_ms u64 | salt [16] | counter u64
//!     | sender_len u16 | sender | ciphertext of the payload | tag [16]
//! ```
//!
//! Everything before the ciphertext travels in clear and is authenticated with the channel
//! the frame was published on (associated data), so a frame cannot be moved to another
//! node, another request ID, another sequence number or another time. The payload (a
//! request's headers, `Authorization` included, its body, the response) is encrypted.
//!
//! Each process draws a random salt and derives its own key from the secret with HKDF; the
//! counter, unique per process and key, is the nonce. Nonces therefore never repeat, however
//! many frames the nodes send, and a receiver tells a replay apart by (salt, counter): it
//! keeps, per sender process, the highest counter seen and a window of the last
//! [`WINDOW`] counters (frames from one sender may arrive slightly out of order). A frame
//! sealed more than `max_age_ms` ago, or that far in the future, is refused, so the window
//! of a sender can be forgotten once it has been quiet that long.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

/// First byte of a sealed frame (a plain frame starts with its kind, an ASCII letter).
pub const SEALED: u8 = b'#';
/// Kind, request ID and sequence number: the plain frame's header, sent in clear and
/// authenticated.
const FRAME_HEADER: usize = super::frame::HEADER;
const SALT: usize = 16;
const TAG: usize = 16;
/// Bytes before the sender's name: marker, frame header, time, salt, counter, name length.
const FIXED: usize = 1 + FRAME_HEADER + 8 + SALT + 8 + 2;
/// How many of a sender's most recent counters are remembered, for frames that arrive out
/// of order; an older counter is refused.
pub const WINDOW: u64 = 4096;
/// Sender processes remembered at once (about 1 KiB each).
pub const MAX_SENDERS: usize = 4096;
const INFO: &[u8] = b"mcp-db relay frame key v1";

/// Why a frame was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Not sealed, while this node has a secret: the sender has none.
    Unsealed,
    /// Sealed, while this node has no secret.
    Sealed,
    /// The tag does not verify: another secret, or a forged or altered frame.
    Forged,
    /// Sealed too long ago (or too far in the future).
    Stale,
    /// Seen before.
    Replayed,
}

impl Rejected {
    pub const ALL: [Rejected; 5] =
        [Rejected::Unsealed, Rejected::Sealed, Rejected::Forged, Rejected::Stale, Rejected::Replayed];

    pub fn name(self) -> &'static str {
        match self {
            Rejected::Unsealed => "unsealed",
            Rejected::Sealed => "sealed",
            Rejected::Forged => "forged",
            Rejected::Stale => "stale",
            Rejected::Replayed => "replayed",
        }
    }

    /// What an operator should look at.
    pub fn likely_cause(self) -> &'static str {
        match self {
            Rejected::Unsealed => {
                "the sending node has no relay secret while this one has: set the same relay_secret \
                 (or MCP_DB_RELAY_SECRET) on every node; else someone with write access to Redis \
                 publishes on the relay's channels"
            }
            Rejected::Sealed => {
                "other nodes seal their frames with a relay secret and this node has none: set the \
                 same relay_secret (or MCP_DB_RELAY_SECRET) on every node"
            }
            Rejected::Forged => {
                "the sending node has another relay secret: set the same relay_secret (or \
                 MCP_DB_RELAY_SECRET) on every node; else someone with write access to Redis forges \
                 or alters frames"
            }
            Rejected::Stale => {
                "the clocks of the nodes disagree by more than the allowed age, or a captured frame was re-published"
            }
            Rejected::Replayed => "a captured frame was re-published on Redis",
        }
    }
}

/// A frame opened: the plain frame (header and payload) and the node that sealed it.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened {
    pub frame: Vec<u8>,
    pub sender: String,
}

/// The counters of one sender process already accepted (RFC 6479's bitmap, indexed by
/// counter modulo the window).
struct Peer {
    key: Arc<LessSafeKey>,
    top: u64,
    seen: [u64; (WINDOW / 64) as usize],
    last_ms: u64,
}

impl Peer {
    fn bit(n: u64) -> (usize, u64) {
        let i = n % WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    /// Records counter `n`; `false` if it was seen, or is too old to tell.
    fn accept(&mut self, n: u64) -> bool {
        if n > self.top {
            if n - self.top >= WINDOW {
                self.seen = [0; (WINDOW / 64) as usize];
            } else {
                for c in self.top + 1..=n {
                    let (w, b) = Self::bit(c);
                    self.seen[w] &= !b;
                }
            }
            self.top = n;
        } else if self.top - n >= WINDOW {
            return false;
        }
        let (w, b) = Self::bit(n);
        if self.seen[w] & b != 0 {
            return false;
        }
        self.seen[w] |= b;
        true
    }
}

/// One node's keys: its own, to seal, and the keys of the senders it heard, to open.
pub struct Seal {
    secret: Vec<u8>,
    node: String,
    salt: [u8; SALT],
    key: LessSafeKey,
    counter: AtomicU64,
    max_age_ms: u64,
    peers: Mutex<HashMap<[u8; SALT], Peer>>,
}

/// The sender a sealed frame names, unverified: for logs about frames that did not open.
pub fn claimed_sender(bytes: &[u8]) -> Option<String> {
    let len = u16::from_be_bytes(bytes.get(FIXED - 2..FIXED)?.try_into().ok()?) as usize;
    let name = bytes.get(FIXED..FIXED + len)?;
    Some(String::from_utf8_lossy(name).chars().take(100).collect())
}

fn derive(secret: &[u8], salt: &[u8; SALT]) -> LessSafeKey {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(secret);
    let okm = prk.expand(&[INFO], &CHACHA20_POLY1305).expect("HKDF-SHA256 yields a 32-byte key");
    LessSafeKey::new(UnboundKey::from(okm))
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// The associated data: the channel the frame travels on, then its clear part.
fn aad(channel: &str, clear: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + channel.len() + clear.len());
    out.extend_from_slice(&u32::try_from(channel.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(clear);
    out
}

impl Seal {
    /// `node` is this node's name, bound into every frame it seals.
    pub fn new(secret: &[u8], node: &str, max_age_ms: u64) -> Seal {
        let mut salt = [0u8; SALT];
        SystemRandom::new().fill(&mut salt).expect("the system's random source works");
        Seal {
            secret: secret.to_vec(),
            node: node.to_owned(),
            salt,
            key: derive(secret, &salt),
            counter: AtomicU64::new(1),
            max_age_ms,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// Seals a plain frame (header and payload) for `channel`, stamped `now_ms`.
    pub fn seal(&self, channel: &str, plain: &[u8], now_ms: u64) -> Vec<u8> {
        let (head, payload) = plain.split_at(FRAME_HEADER.min(plain.len()));
        let counter = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut out = Vec::with_capacity(FIXED + self.node.len() + payload.len() + TAG);
        out.push(SEALED);
        out.extend_from_slice(head);
        out.resize(1 + FRAME_HEADER, 0);
        out.extend_from_slice(&now_ms.to_be_bytes());
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&counter.to_be_bytes());
        // `Relay::spawn` refuses a node name this long before there is a seal.
        out.extend_from_slice(&u16::try_from(self.node.len()).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(self.node.as_bytes());
        let clear = out.len();
        out.extend_from_slice(payload);
        let aad = aad(channel, &out[..clear]);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(counter), Aad::from(aad), &mut out[clear..])
            .expect("a relay frame is far below ChaCha20-Poly1305's size limit");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Opens a frame heard on `channel` at `now_ms`: authentic, fresh and never seen before.
    pub fn open(&self, channel: &str, bytes: &[u8], now_ms: u64) -> Result<Opened, Rejected> {
        if bytes.first() != Some(&SEALED) {
            return Err(Rejected::Unsealed);
        }
        if bytes.len() < FIXED + TAG {
            return Err(Rejected::Forged);
        }
        let u64_at = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
        let sealed_ms = u64_at(1 + FRAME_HEADER);
        let salt: [u8; SALT] = bytes[1 + FRAME_HEADER + 8..][..SALT].try_into().unwrap();
        let counter = u64_at(1 + FRAME_HEADER + 8 + SALT);
        let name_len = u16::from_be_bytes(bytes[FIXED - 2..FIXED].try_into().unwrap()) as usize;
        let clear = FIXED + name_len;
        if bytes.len() < clear + TAG {
            return Err(Rejected::Forged);
        }
        let aad = aad(channel, &bytes[..clear]);
        // The plain frame is built where the body is decrypted: one copy of it, not two.
        let mut frame = Vec::with_capacity(FRAME_HEADER + bytes.len() - clear);
        frame.extend_from_slice(&bytes[1..=FRAME_HEADER]);
        frame.extend_from_slice(&bytes[clear..]);
        // A new sender's key is derived (HKDF, a few microseconds) but kept only once its
        // frame verifies, so forged salts cost time but never memory.
        let known = self.peers.lock().unwrap().get(&salt).map(|p| p.key.clone());
        let key = known.unwrap_or_else(|| Arc::new(derive(&self.secret, &salt)));
        let opened_len = key
            .open_in_place(nonce(counter), Aad::from(aad), &mut frame[FRAME_HEADER..])
            .map_err(|_| Rejected::Forged)?
            .len();
        frame.truncate(FRAME_HEADER + opened_len);
        let sender = String::from_utf8(bytes[FIXED..clear].to_vec()).map_err(|_| Rejected::Forged)?;
        if now_ms.abs_diff(sealed_ms) > self.max_age_ms {
            return Err(Rejected::Stale);
        }
        let mut peers = self.peers.lock().unwrap();
        if !peers.contains_key(&salt) {
            if peers.len() >= MAX_SENDERS {
                self.forget_one(&mut peers, now_ms);
            }
            peers.insert(salt, Peer { key, top: 0, seen: [0; (WINDOW / 64) as usize], last_ms: now_ms });
        }
        let peer = peers.get_mut(&salt).expect("inserted above");
        if !peer.accept(counter) {
            return Err(Rejected::Replayed);
        }
        peer.last_ms = peer.last_ms.max(now_ms);
        drop(peers);
        Ok(Opened { frame, sender })
    }

    /// Makes room for a sender: every sender quiet for longer than the maximum age (their
    /// frames are refused as stale anyway), or else the one quiet the longest.
    fn forget_one(&self, peers: &mut HashMap<[u8; SALT], Peer>, now_ms: u64) {
        let before = peers.len();
        peers.retain(|_, p| now_ms.saturating_sub(p.last_ms) <= self.max_age_ms);
        if peers.len() < before {
            return;
        }
        if let Some(salt) = peers.iter().min_by_key(|(_, p)| p.last_ms).map(|(s, _)| *s) {
            tracing::warn!(
                "relay: more than {MAX_SENDERS} sending processes within {} ms; forgetting the quietest one's \
                 replay window",
                self.max_age_ms
            );
            peers.remove(&salt);
        }
    }

    /// Sender processes remembered.
    #[cfg(test)]
    pub fn senders(&self) -> usize {
        self.peers.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;
    const AGE: u64 = 30_000;

    fn plain(kind: u8, id: u8, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&[id; 16]);
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn a_sealed_frame_opens_once_with_its_sender() {
        let (a, b) = (Seal::new(b"0123456789abcdef", "node-a", AGE), Seal::new(b"0123456789abcdef", "node-b", AGE));
        let frame = plain(b'Q', 7, 0, b"Authorization: Bearer secret-token");
        let sealed = a.seal("p:r:node-b:q", &frame, NOW);
        assert!(!sealed.windows(12).any(|w| w == b"secret-token"), "the payload travels encrypted");
        let opened = b.open("p:r:node-b:q", &sealed, NOW + 5).unwrap();
        assert_eq!(opened, Opened { frame: frame.clone(), sender: "node-a".into() });
        assert_eq!(b.open("p:r:node-b:q", &sealed, NOW + 6), Err(Rejected::Replayed));
        assert_eq!(b.senders(), 1);
    }

    #[test]
    fn empty_payloads_and_own_frames_open() {
        let a = Seal::new(b"0123456789abcdef", "node-a", AGE);
        let frame = plain(b'C', 1, 32, b"");
        assert_eq!(a.open("c", &a.seal("c", &frame, NOW), NOW).unwrap().frame, frame);
    }

    #[test]
    fn any_change_to_a_frame_breaks_its_tag() {
        let (a, b) = (Seal::new(b"0123456789abcdef", "node-a", AGE), Seal::new(b"0123456789abcdef", "node-b", AGE));
        let sealed = a.seal("chan", &plain(b'D', 3, 9, b"data: x\n\n"), NOW);
        for at in 1..sealed.len() {
            let mut altered = sealed.clone();
            altered[at] ^= 0x01;
            assert_eq!(b.open("chan", &altered, NOW), Err(Rejected::Forged), "byte {at} altered");
        }
        assert_eq!(b.open("other-chan", &sealed, NOW), Err(Rejected::Forged), "moved to another channel");
        assert_eq!(b.open("chan", &sealed[..sealed.len() - 1], NOW), Err(Rejected::Forged), "truncated");
        assert_eq!(b.open("chan", &sealed[..10], NOW), Err(Rejected::Forged), "short");
        assert_eq!(b.open("chan", &sealed, NOW).map(|o| o.sender), Ok("node-a".into()), "the original still opens");
    }

    #[test]
    fn another_secret_or_no_seal_is_refused() {
        let a = Seal::new(b"0123456789abcdef", "node-a", AGE);
        let other = Seal::new(b"fedcba9876543210", "node-b", AGE);
        let frame = plain(b'X', 1, 0, b"");
        assert_eq!(other.open("c", &a.seal("c", &frame, NOW), NOW), Err(Rejected::Forged));
        assert_eq!(other.open("c", &frame, NOW), Err(Rejected::Unsealed));
        assert_eq!(other.senders(), 0, "a sender whose frames fail is not remembered");
    }

    #[test]
    fn stale_and_future_frames_are_refused() {
        let (a, b) = (Seal::new(b"0123456789abcdef", "node-a", AGE), Seal::new(b"0123456789abcdef", "node-b", AGE));
        let frame = plain(b'Q', 1, 0, b"x");
        assert_eq!(b.open("c", &a.seal("c", &frame, NOW - AGE - 1), NOW), Err(Rejected::Stale));
        assert_eq!(b.open("c", &a.seal("c", &frame, NOW + AGE + 1), NOW), Err(Rejected::Stale));
        assert!(b.open("c", &a.seal("c", &frame, NOW - AGE), NOW).is_ok());
    }

    #[test]
    fn frames_out_of_order_open_once_within_the_window() {
        let (a, b) = (Seal::new(b"0123456789abcdef", "node-a", AGE), Seal::new(b"0123456789abcdef", "node-b", AGE));
        let sealed: Vec<Vec<u8>> = (0..10).map(|i| a.seal("c", &plain(b'D', 1, i, b"x"), NOW)).collect();
        for i in [3, 1, 0, 2, 9, 5, 4, 8, 6, 7] {
            assert!(b.open("c", &sealed[i], NOW).is_ok(), "frame {i}");
        }
        for (i, s) in sealed.iter().enumerate() {
            assert_eq!(b.open("c", s, NOW), Err(Rejected::Replayed), "frame {i} again");
        }
    }

    #[test]
    fn the_replay_window_slides() {
        let mut p =
            Peer { key: Arc::new(derive(b"k", &[0; SALT])), top: 0, seen: [0; (WINDOW / 64) as usize], last_ms: 0 };
        assert!(p.accept(5));
        assert!(!p.accept(5));
        assert!(p.accept(5 + WINDOW - 1));
        assert!(!p.accept(5), "now outside the window");
        assert!(p.accept(6), "inside the window, unseen");
        assert!(p.accept(10 * WINDOW));
        assert!(!p.accept(10 * WINDOW - WINDOW), "too old to tell");
        assert!(p.accept(10 * WINDOW - WINDOW + 1), "the oldest slot still tracked");
        assert!(!p.accept(10 * WINDOW - WINDOW + 1));
    }

    #[test]
    fn senders_are_bounded() {
        let b = Seal::new(b"0123456789abcdef", "node-b", AGE);
        let frame = plain(b'C', 1, 1, b"");
        for i in 0..MAX_SENDERS + 3 {
            let a = Seal::new(b"0123456789abcdef", &format!("node-{i}"), AGE);
            assert!(b.open("c", &a.seal("c", &frame, NOW), NOW + i as u64).is_ok());
        }
        assert_eq!(b.senders(), MAX_SENDERS);
    }

    /// What sealing costs per frame, sealed and opened, against authenticating the same
    /// frame only (HMAC-SHA256, payload in clear): why the relay encrypts.
    /// `cargo test --release --lib seal_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a check: run it by hand"]
    fn seal_cost() {
        use ring::hmac;
        use std::time::Instant;
        for size in [200usize, 2_000, 64 * 1024, 1 << 20] {
            let frame = plain(b'D', 1, 1, &vec![7u8; size]);
            let n = u32::try_from((50_000_000 / (size + 1000)).clamp(50, 100_000)).unwrap();
            let (a, b) = (Seal::new(b"0123456789abcdef", "node-a", AGE), Seal::new(b"0123456789abcdef", "node-b", AGE));
            let start = Instant::now();
            for _ in 0..n {
                let sealed = a.seal("p:r:node-b", &frame, NOW);
                assert!(b.open("p:r:node-b", &sealed, NOW).is_ok());
            }
            let sealed = start.elapsed() / n;
            let key = hmac::Key::new(hmac::HMAC_SHA256, b"0123456789abcdef");
            let start = Instant::now();
            for _ in 0..n {
                let mut out = Vec::with_capacity(frame.len() + 64);
                out.extend_from_slice(&frame);
                out.extend_from_slice(&NOW.to_be_bytes());
                let tag = hmac::sign(&key, &out);
                out.extend_from_slice(tag.as_ref());
                let (message, tag) = out.split_at(out.len() - 32);
                assert!(hmac::verify(&key, message, tag).is_ok());
                std::hint::black_box(&out);
            }
            let signed = start.elapsed() / n;
            println!("{size:>8} B payload: sealed and opened {sealed:>10.2?}; HMAC only {signed:>10.2?} per frame");
        }
    }
}
