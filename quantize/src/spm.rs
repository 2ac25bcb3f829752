//! The pieces of a SentencePiece `tokenizer.model`: a protobuf `ModelProto` whose field 1
//! repeats `SentencePiece { string piece = 1; float score = 2; Type type = 3; }`. Only what
//! llama.cpp's converter reads; the rest of the message is skipped.

use std::path::Path;

/// `SentencePiece.Type`.
pub const NORMAL: i32 = 1;
pub const UNKNOWN: i32 = 2;
pub const CONTROL: i32 = 3;
pub const USER_DEFINED: i32 = 4;
pub const UNUSED: i32 = 5;
pub const BYTE: i32 = 6;

#[derive(Clone, Debug, PartialEq)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    pub kind: i32,
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 64 bits".into())
    }

    fn bytes(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len()).ok_or("field runs past the end")?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next field: (number, wire type); its payload is then read or skipped.
    fn key(&mut self) -> Result<(u64, u8), String> {
        let k = self.varint()?;
        Ok((k >> 3, (k & 7) as u8))
    }

    fn skip(&mut self, wire: u8) -> Result<(), String> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.bytes(8).map(|_| ()),
            2 => {
                let n = self.varint()? as usize;
                self.bytes(n).map(|_| ())
            }
            5 => self.bytes(4).map(|_| ()),
            w => Err(format!("unsupported wire type {w}")),
        }
    }
}

fn piece(b: &[u8]) -> Result<Piece, String> {
    let mut r = Reader { b, pos: 0 };
    let mut p = Piece { piece: String::new(), score: 0.0, kind: NORMAL };
    while r.pos < b.len() {
        match r.key()? {
            (1, 2) => {
                let n = r.varint()? as usize;
                p.piece = String::from_utf8(r.bytes(n)?.to_vec()).map_err(|_| "a piece is not UTF-8")?;
            }
            (2, 5) => p.score = f32::from_le_bytes(r.bytes(4)?.try_into().unwrap()),
            (3, 0) => p.kind = r.varint()? as i32,
            (_, wire) => r.skip(wire)?,
        }
    }
    Ok(p)
}

/// The pieces of `bytes` (a serialized `ModelProto`), in id order.
pub fn parse(bytes: &[u8]) -> Result<Vec<Piece>, String> {
    let mut r = Reader { b: bytes, pos: 0 };
    let mut pieces = Vec::new();
    while r.pos < bytes.len() {
        match r.key()? {
            (1, 2) => {
                let n = r.varint()? as usize;
                pieces.push(piece(r.bytes(n)?)?);
            }
            (_, wire) => r.skip(wire)?,
        }
    }
    if pieces.is_empty() {
        return Err("no pieces".into());
    }
    Ok(pieces)
}

pub fn read(path: &Path) -> Result<Vec<Piece>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    parse(&bytes).map_err(|e| format!("not a SentencePiece model: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(out: &mut Vec<u8>, num: u64, payload: &[u8]) {
        out.push((num << 3 | 2) as u8);
        out.push(payload.len() as u8);
        out.extend_from_slice(payload);
    }

    #[test]
    fn reads_pieces_and_skips_the_rest() {
        let mut p1 = Vec::new();
        field(&mut p1, 1, "▁a".as_bytes());
        p1.push(2 << 3 | 5);
        p1.extend_from_slice(&(-1.5f32).to_le_bytes());
        let mut p2 = Vec::new();
        field(&mut p2, 1, b"<bos>");
        p2.extend_from_slice(&[3 << 3, CONTROL as u8]);
        let mut model = Vec::new();
        field(&mut model, 1, &p1);
        field(&mut model, 2, &[0x18, 2]); // trainer_spec { model_type: BPE }
        field(&mut model, 1, &p2);
        let pieces = parse(&model).unwrap();
        assert_eq!(
            pieces,
            [
                Piece { piece: "▁a".into(), score: -1.5, kind: NORMAL },
                Piece { piece: "<bos>".into(), score: 0.0, kind: CONTROL }
            ]
        );
        assert!(parse(&model[..model.len() - 2]).is_err());
    }
}
