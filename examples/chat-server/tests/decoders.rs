//! Every network decoder is a plain function; none may panic on any input.
//! A cheap stand-in for the fuzzer: random bytes and mutations of valid
//! inputs, replayed with a fixed seed so failures reproduce.

use bytes::BytesMut;
use chat_server::protocol::{http, tcp, ws};
use tokio_util::codec::Decoder;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const SEEDS: &[&[u8]] = &[
    br#"{"type":"auth","token":"abc"}"#,
    br#"{"type":"send","room":"general","text":"hi","client_id":"c1"}"#,
    br#"{"type":"history","room":"general","before":10,"limit":5}"#,
    br#"{"name":"alice","password":"correct horse"}"#,
    br#"{"kind":"leak","permits":3}"#,
    br#"{"capacity":10}"#,
    b"SAY general c1 hello world\r",
    b"HISTORY general 20",
    b"AUTH 0123456789abcdef",
    b"before=1&limit=2",
];

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(5) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v.truncate(i);
            }
            2 => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.next() as u8);
            }
            3 => {
                let chunk = v.clone();
                v.extend_from_slice(&chunk);
            }
            _ => v.extend((0..rng.below(8)).map(|_| rng.next() as u8)),
        }
    }
    v
}

fn feed(input: &[u8]) {
    let _ = ws::decode(input);
    let _ = tcp::parse_line(input);
    let _ = http::decode_credentials(input);
    let _ = http::decode_new_room(input);
    let _ = http::decode_add_member(input);
    let _ = http::decode_capacity(input);
    let _ = http::decode_revoke(input);
    let _ = http::decode_fault(input);
    if let Ok(s) = std::str::from_utf8(input) {
        let _ = http::parse_history_query(Some(s));
    }
    let mut framer = tcp::LineFramer::new();
    let mut buf = BytesMut::new();
    for chunk in input.chunks(7) {
        buf.extend_from_slice(chunk);
        while let Some(f) = framer.decode(&mut buf).unwrap() {
            if let tcp::Frame::Line(l) = f {
                assert!(l.len() <= tcp::MAX_LINE);
                let _ = tcp::parse_line(&l);
            }
        }
    }
}

#[test]
fn decoders_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..20_000 {
        let seed = SEEDS[rng.below(SEEDS.len())];
        feed(&mutate(&mut rng, seed));
        let len = rng.below(64);
        let noise: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        feed(&noise);
    }
    // Edge cases: huge, deeply nested, non-UTF-8.
    feed(&vec![b'['; 100_000]);
    feed(&vec![b'\n'; 10_000]);
    feed(&[0xff; 5000]);
    feed(
        format!(
            r#"{{"type":"send","room":"general","text":"{}","client_id":"x"}}"#,
            "é".repeat(4001)
        )
        .as_bytes(),
    );
}

#[test]
fn framer_memory_stays_bounded() {
    let mut f = tcp::LineFramer::new();
    let mut buf = BytesMut::new();
    for _ in 0..1000 {
        buf.extend_from_slice(&[b'x'; 1000]);
        while f.decode(&mut buf).unwrap().is_some() {}
        assert!(buf.len() <= tcp::MAX_LINE + 1000);
    }
}
