use super::*;

/// SplitMix64: a seeded, dependency-free generator for the property tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Values biased towards the edges of each varint length.
    fn interesting(&mut self) -> u64 {
        match self.below(4) {
            0 => self.next(),
            1 => self.next() >> self.below(64),
            2 => (1u64 << self.below(64)).wrapping_sub(self.below(3)),
            _ => self.below(300),
        }
    }
}

/// One field of a random encoding.
#[derive(Debug, Clone, PartialEq)]
enum Field {
    U8(u8),
    U16(u16),
    U32(u32),
    U64(u64),
    Bool(bool),
    Varint(u64),
    Zigzag(i64),
    Block(Vec<u8>),
    Block16(Vec<u8>),
    VarintBlock(Vec<u8>),
    Nested(Vec<Field>),
}

fn random_field(rng: &mut Rng, depth: u32) -> Field {
    let bytes = |rng: &mut Rng| -> Vec<u8> {
        let n = rng.below(20) as usize;
        (0..n).map(|_| rng.next() as u8).collect()
    };
    match rng.below(if depth == 0 { 11 } else { 10 }) {
        0 => Field::U8(rng.next() as u8),
        1 => Field::U16(rng.next() as u16),
        2 => Field::U32(rng.next() as u32),
        3 => Field::U64(rng.interesting()),
        4 => Field::Bool(rng.below(2) == 1),
        5 => Field::Varint(rng.interesting()),
        6 => Field::Zigzag(rng.interesting() as i64),
        7 => Field::Block(bytes(rng)),
        8 => Field::Block16(bytes(rng)),
        9 => Field::VarintBlock(bytes(rng)),
        _ => Field::Nested((0..rng.below(4)).map(|_| random_field(rng, 1)).collect()),
    }
}

fn write(w: &mut Writer<'_>, f: &Field) {
    match f {
        Field::U8(v) => w.u8(*v),
        Field::U16(v) => w.u16(*v),
        Field::U32(v) => w.u32(*v),
        Field::U64(v) => w.u64(*v),
        Field::Bool(v) => w.bool(*v),
        Field::Varint(v) => w.varint(*v),
        Field::Zigzag(v) => w.zigzag(*v),
        Field::Block(v) => w.block(v),
        Field::Block16(v) => w.block_u16(v),
        Field::VarintBlock(v) => w.varint_block(v),
        Field::Nested(fs) => w.nested_u32(|w| fs.iter().for_each(|f| write(w, f))),
    }
}

/// Reads the field `shape` says is next.
fn read(r: &mut Reader<'_>, shape: &Field) -> Result<Field, CodecError> {
    Ok(match shape {
        Field::U8(_) => Field::U8(r.u8("u8")?),
        Field::U16(_) => Field::U16(r.u16("u16")?),
        Field::U32(_) => Field::U32(r.u32("u32")?),
        Field::U64(_) => Field::U64(r.u64("u64")?),
        Field::Bool(_) => Field::Bool(r.bool("bool")?),
        Field::Varint(_) => Field::Varint(r.varint("varint")?),
        Field::Zigzag(_) => Field::Zigzag(r.zigzag("zigzag")?),
        Field::Block(_) => Field::Block(r.block("block")?.to_vec()),
        Field::Block16(_) => Field::Block16(r.block_u16("block16")?.to_vec()),
        Field::VarintBlock(_) => Field::VarintBlock(r.varint_block("vblock", 64)?.to_vec()),
        Field::Nested(fs) => {
            let mut sub = Reader::new(r.block("nested")?);
            let mut out = Vec::new();
            for f in fs {
                out.push(read(&mut sub, f)?);
            }
            sub.finish()?;
            Field::Nested(out)
        }
    })
}

fn read_all(bytes: &[u8], shape: &[Field]) -> Result<Vec<Field>, CodecError> {
    let mut r = Reader::new(bytes);
    let mut out = Vec::new();
    for f in shape {
        out.push(read(&mut r, f)?);
    }
    r.finish()?;
    Ok(out)
}

#[test]
fn random_encodings_round_trip_and_every_truncation_fails() {
    let mut rng = Rng(7);
    for _ in 0..2000 {
        let fields: Vec<Field> = (0..rng.below(8) + 1)
            .map(|_| random_field(&mut rng, 0))
            .collect();
        let mut bytes = Vec::new();
        let mut w = Writer::new(&mut bytes);
        fields.iter().for_each(|f| write(&mut w, f));
        assert_eq!(read_all(&bytes, &fields).unwrap(), fields);
        // Cut at every byte: always an error, never a panic, never a value.
        for n in 0..bytes.len() {
            let e = read_all(&bytes[..n], &fields).unwrap_err();
            assert!(
                matches!(e, CodecError::Short { .. }),
                "cut at {n} of {fields:?}: {e}"
            );
        }
        // One byte too many.
        bytes.push(0);
        assert_eq!(
            read_all(&bytes, &fields),
            Err(CodecError::Trailing { left: 1 })
        );
    }
}

#[test]
fn garbage_never_panics() {
    let mut rng = Rng(99);
    for _ in 0..5000 {
        let shape: Vec<Field> = (0..rng.below(8) + 1)
            .map(|_| random_field(&mut rng, 0))
            .collect();
        let garbage: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
        // Any outcome is fine as long as it is a value or an error.
        let _ = read_all(&garbage, &shape);
        let mut r = Reader::new(&garbage);
        let _ = r.count("count", 12);
        let _ = r.varint_max("len", 5);
    }
}

#[test]
fn varint_sizes_and_limits() {
    for (v, len) in [
        (0u64, 1),
        (127, 1),
        (128, 2),
        (16383, 2),
        (16384, 3),
        (u64::MAX >> 1, 9),
        (u64::MAX, 10),
    ] {
        let mut out = Vec::new();
        Writer::new(&mut out).varint(v);
        assert_eq!(out.len(), len, "{v}");
        assert_eq!(Reader::new(&out).varint("v"), Ok(v));
    }
    // Eleven continuation bytes: too long, not a loop.
    assert_eq!(
        Reader::new(&[0xff; 11]).varint("v"),
        Err(CodecError::VarintTooLong { what: "v" })
    );
    // Ten bytes whose last carries more than bit 63.
    let mut over = [0xffu8; 10];
    over[9] = 0x02;
    assert_eq!(
        Reader::new(&over).varint("v"),
        Err(CodecError::VarintTooLong { what: "v" })
    );
    // A cut varint is short.
    assert!(matches!(
        Reader::new(&[0x80, 0x80]).varint("v"),
        Err(CodecError::Short { what: "v", .. })
    ));
    // Non-minimal encodings are read (they are never written).
    assert_eq!(Reader::new(&[0x80, 0x00]).varint("v"), Ok(0));
}

#[test]
fn zigzag_round_trips() {
    for v in [
        0i64,
        1,
        -1,
        63,
        -64,
        1 << 40,
        -(1 << 40),
        i64::MIN,
        i64::MAX,
    ] {
        assert_eq!(unzigzag(zigzag(v)), v);
    }
    assert_eq!(zigzag(-1), 1);
    assert_eq!(zigzag(1), 2);
}

#[test]
fn errors_name_the_field() {
    let mut r = Reader::new(&[2]);
    let e = r.bool("resumed").unwrap_err();
    assert_eq!(e, CodecError::Invalid { what: "resumed" });
    assert_eq!(e.what(), "resumed");
    assert!(e.to_string().contains("resumed"), "{e}");
    // The failed read left the byte there.
    assert_eq!(r.remaining(), 1);

    let e = Reader::new(&[0, 0]).u32("window").unwrap_err();
    assert_eq!(
        e,
        CodecError::Short {
            what: "window",
            needed: 4,
            left: 2
        }
    );
    assert!(e.to_string().contains("window"), "{e}");
    assert_eq!(
        Reader::new(&[5]).varint_max("partial", 4),
        Err(CodecError::Invalid { what: "partial" })
    );
    assert_eq!(CodecError::Trailing { left: 3 }.what(), "trailing bytes");
}

#[test]
fn a_lying_length_or_count_is_short_not_an_allocation() {
    // A block that claims 4 GiB.
    let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 1, 2]);
    assert!(matches!(
        r.block("partial"),
        Err(CodecError::Short {
            what: "partial",
            ..
        })
    ));
    assert_eq!(r.remaining(), 6, "a failed read consumes nothing");
    // A count of 2^32 - 1 elements of 12 bytes over 2 bytes of input.
    let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 1, 2]);
    assert!(matches!(
        r.count("flows", 12),
        Err(CodecError::Short { what: "flows", .. })
    ));
    let mut r = Reader::new(&[0, 0, 0, 2, 1, 2]);
    assert_eq!(r.count("sizes", 1), Ok(2));
    // A varint length above its bound.
    let mut out = Vec::new();
    Writer::new(&mut out).varint_block(&[0; 10]);
    assert_eq!(
        Reader::new(&out).varint_block("partial", 9),
        Err(CodecError::Invalid { what: "partial" })
    );
}

#[test]
fn nested_lengths_are_patched() {
    let mut out = vec![9];
    let mut w = Writer::new(&mut out);
    w.nested_u16(|w| {
        w.u32(1);
        w.nested_u32(|w| w.bytes(b"abc"));
    });
    assert_eq!(w.position(), 1 + 2 + 4 + 4 + 3);
    assert_eq!(out, [9, 0, 11, 0, 0, 0, 1, 0, 0, 0, 3, b'a', b'b', b'c']);
    let mut r = Reader::new(&out[1..]);
    let mut inner = Reader::new(r.block_u16("outer").unwrap());
    assert_eq!(inner.u32("one"), Ok(1));
    assert_eq!(inner.block("abc"), Ok(&b"abc"[..]));
    inner.finish().unwrap();
    r.finish().unwrap();
}
