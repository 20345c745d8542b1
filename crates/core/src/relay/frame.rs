//! Relay frames and their payloads: a kind, a request ID, a sequence number and bytes;
//! length-prefixed fields for the few structured payloads (request, response start).

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// A relayed request's ID, unique across nodes.
pub type ReqId = [u8; 16];

/// A frame's header: kind, request ID, sequence number.
pub(crate) const HEADER: usize = 1 + 16 + 4;

/// The frame kinds.
pub(crate) mod kind {
    pub const REQUEST: u8 = b'Q';
    pub const ACCEPTED: u8 = b'A';
    pub const START: u8 = b'S';
    pub const DATA: u8 = b'D';
    pub const END: u8 = b'E';
    /// A whole response in one frame: status, body and headers (a JSON reply, a 202, a 404).
    pub const WHOLE: u8 = b'W';
    pub const REFUSED: u8 = b'R';
    pub const CREDIT: u8 = b'C';
    pub const CANCEL: u8 = b'X';
    /// Never sent: what a relaying node tells itself when the owner is found gone.
    pub const LOST: u8 = b'L';
}

/// A request ID unique across nodes: a random per-process half and a counter.
pub(crate) fn new_id() -> ReqId {
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        h.finish()
    });
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&seed.to_be_bytes());
    id[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    id
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub id: ReqId,
    pub seq: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.payload.len());
        out.push(self.kind);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Frame> {
        if bytes.len() < HEADER {
            return None;
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&bytes[1..17]);
        let seq = u32::from_be_bytes(bytes[17..21].try_into().ok()?);
        Some(Frame { kind: bytes[0], id, seq, payload: bytes[HEADER..].to_vec() })
    }
}

/// Length-prefixed fields, for the few structured payloads (request, response start).
#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn put(&mut self, bytes: &[u8]) -> &mut Self {
        // No field reaches 4 GiB (Redis caps a message at 512 MB); if one did, the length
        // would not match and the receiver would refuse the frame as malformed.
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(bytes);
        self
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_be_bytes(self.0.get(..4)?.try_into().ok()?) as usize;
        let out = self.0.get(4..4 + len)?;
        self.0 = &self.0[4 + len..];
        Some(out)
    }

    fn text(&mut self) -> Option<String> {
        String::from_utf8(self.take()?.to_vec()).ok()
    }
}

/// Whether a frame is part of a response (what may come first when acceptance is lazy).
pub(crate) fn is_response(kind: u8) -> bool {
    matches!(kind, kind::START | kind::DATA | kind::END | kind::WHOLE)
}

/// A request as the owner receives it.
pub struct Incoming {
    pub id: ReqId,
    pub from: String,
    pub session: String,
    pub head: String,
    pub body: Vec<u8>,
    /// 0: the sender wants its acceptance at once (what nodes before lazy acceptance ask).
    /// Otherwise it takes the response's first frame as the acceptance, and needs an
    /// acceptance of its own only from a response slower than this many milliseconds (the
    /// request frame's sequence number carries it).
    pub accept_within_ms: u32,
}

pub(crate) fn encode_request(from: &str, session: &str, head: &str, body: &[u8]) -> Vec<u8> {
    let mut w = Writer::default();
    w.put(from.as_bytes()).put(session.as_bytes()).put(head.as_bytes()).put(body);
    w.0
}

pub(crate) fn decode_request(frame: &Frame) -> Option<Incoming> {
    let mut r = Reader(&frame.payload);
    Some(Incoming {
        id: frame.id,
        from: r.text()?,
        session: r.text()?,
        head: r.text()?,
        body: r.take()?.to_vec(),
        accept_within_ms: frame.seq,
    })
}

pub(crate) fn encode_start(status: u16, headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut w = Writer::default();
    w.put(&status.to_be_bytes());
    for (name, value) in headers {
        w.put(name).put(value);
    }
    w.0
}

/// Response headers, as name and value bytes.
pub type Headers = Vec<(Vec<u8>, Vec<u8>)>;

pub(crate) fn encode_whole(status: u16, headers: &[(Vec<u8>, Vec<u8>)], body: &[u8]) -> Vec<u8> {
    let mut w = Writer::default();
    w.put(body);
    w.0.extend_from_slice(&encode_start(status, headers));
    w.0
}

pub(crate) fn decode_whole(payload: &[u8]) -> Option<(u16, Headers, &[u8])> {
    let mut r = Reader(payload);
    let body = r.take()?;
    let (status, headers) = decode_start(r.0)?;
    Some((status, headers, body))
}

pub(crate) fn decode_start(payload: &[u8]) -> Option<(u16, Headers)> {
    let mut r = Reader(payload);
    let status = u16::from_be_bytes(r.take()?.try_into().ok()?);
    let mut headers = Vec::new();
    while !r.0.is_empty() {
        headers.push((r.take()?.to_vec(), r.take()?.to_vec()));
    }
    Some((status, headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frame = Frame { kind: kind::DATA, id: new_id(), seq: 7, payload: b"data: x\n\n".to_vec() };
        assert_eq!(Frame::decode(&frame.encode()), Some(frame));
        assert_eq!(Frame::decode(b"short"), None);
    }

    #[test]
    fn requests_and_starts_round_trip() {
        let bytes = encode_request("node-1", "sess", "{\"method\":\"POST\"}", b"{}");
        let mut frame = Frame { kind: kind::REQUEST, id: new_id(), seq: 150, payload: bytes };
        let r = decode_request(&frame).unwrap();
        assert_eq!(
            (r.from.as_str(), r.session.as_str(), r.head.as_str(), r.body.as_slice(), r.accept_within_ms),
            ("node-1", "sess", "{\"method\":\"POST\"}", &b"{}"[..], 150)
        );
        frame.payload.pop();
        assert!(decode_request(&frame).is_none(), "a truncated request is refused");
        let headers = vec![(b"content-type".to_vec(), b"text/event-stream".to_vec())];
        assert_eq!(decode_start(&encode_start(200, &headers)), Some((200, headers.clone())));
        let whole = encode_whole(404, &headers, b"{\"error\":1}");
        assert_eq!(decode_whole(&whole), Some((404, headers.clone(), &b"{\"error\":1}"[..])));
        assert_eq!(decode_whole(&encode_whole(202, &[], b"")), Some((202, vec![], &b""[..])));
        assert!(decode_whole(&whole[..3]).is_none(), "a truncated response is refused");
    }

    #[test]
    fn ids_are_unique() {
        assert_ne!(new_id(), new_id());
    }
}
