//! The events a server publishes to its subscribers, and their encoding on the wire.
//!
//! ```text
//! 'S' | version 1 | kind u8 | origin [16] | seq u64 | uri (ResourceUpdated only)
//! ```
//!
//! `origin` names the publishing bus (random per process and bus), so the publisher skips
//! its own events when Redis echoes them back: it delivered them locally already. `seq`
//! counts that publisher's events, so a receiver can see one was lost in between.

/// The first byte of every event on the wire; anything else on the channel is not ours.
const MAGIC: u8 = b'S';
const VERSION: u8 = 1;
/// Magic, version, kind, origin, seq.
const HEADER: usize = 3 + ORIGIN + 8;
pub const ORIGIN: usize = 16;

/// One thing that changed on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    ToolsListChanged,
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated { uri: String },
}

impl Event {
    fn kind(&self) -> u8 {
        match self {
            Event::ToolsListChanged => 1,
            Event::PromptsListChanged => 2,
            Event::ResourcesListChanged => 3,
            Event::ResourceUpdated { .. } => 4,
        }
    }

    /// The three list-changed events: what a subscriber is sent after an outage, since it
    /// may have missed any of them (refetching a list is always safe).
    #[must_use]
    pub fn every_list_changed() -> [Event; 3] {
        [Event::ToolsListChanged, Event::PromptsListChanged, Event::ResourcesListChanged]
    }
}

/// An event as it travels: who published it, its number there, and the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub origin: [u8; ORIGIN],
    pub seq: u64,
    pub event: Event,
}

impl Envelope {
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let uri = match &self.event {
            Event::ResourceUpdated { uri } => uri.as_bytes(),
            _ => &[],
        };
        let mut out = Vec::with_capacity(HEADER + uri.len());
        out.extend_from_slice(&[MAGIC, VERSION, self.event.kind()]);
        out.extend_from_slice(&self.origin);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(uri);
        out
    }

    /// `None` for anything that is not a well-formed event of this version.
    #[must_use]
    pub fn decode(bytes: &[u8]) -> Option<Envelope> {
        let (header, rest) = bytes.split_at_checked(HEADER)?;
        let [MAGIC, VERSION, kind, ..] = *header else { return None };
        let origin: [u8; ORIGIN] = header[3..3 + ORIGIN].try_into().ok()?;
        let seq = u64::from_be_bytes(header[3 + ORIGIN..].try_into().ok()?);
        let event = match (kind, rest) {
            (1, []) => Event::ToolsListChanged,
            (2, []) => Event::PromptsListChanged,
            (3, []) => Event::ResourcesListChanged,
            (4, uri) if !uri.is_empty() => Event::ResourceUpdated { uri: std::str::from_utf8(uri).ok()?.to_owned() },
            _ => return None,
        };
        Some(Envelope { origin, seq, event })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(event: Event) -> Envelope {
        Envelope { origin: [7; ORIGIN], seq: 42, event }
    }

    #[test]
    fn every_event_round_trips() {
        for event in [
            Event::ToolsListChanged,
            Event::PromptsListChanged,
            Event::ResourcesListChanged,
            Event::ResourceUpdated { uri: "file:///a b/ü?x=1".into() },
        ] {
            let sent = envelope(event);
            assert_eq!(Envelope::decode(&sent.encode()), Some(sent));
        }
    }

    #[test]
    fn a_list_changed_is_only_its_header() {
        assert_eq!(envelope(Event::ToolsListChanged).encode().len(), HEADER);
    }

    #[test]
    fn anything_else_on_the_channel_is_ignored() {
        let good = envelope(Event::ResourceUpdated { uri: "u".into() }).encode();
        let mut other_version = good.clone();
        other_version[1] = 2;
        let mut unknown_kind = good.clone();
        unknown_kind[2] = 9;
        let mut list_with_uri = envelope(Event::ToolsListChanged).encode();
        list_with_uri.push(b'x');
        let mut not_utf8 = envelope(Event::ToolsListChanged).encode();
        not_utf8[2] = 4;
        not_utf8.push(0xff);
        let empty_uri = &good[..HEADER];
        for noise in [
            &b""[..],
            b"closed s1",
            &good[..HEADER - 1],
            &other_version,
            &unknown_kind,
            &list_with_uri,
            &not_utf8,
            empty_uri,
        ] {
            assert_eq!(Envelope::decode(noise), None, "{noise:?}");
        }
    }
}
