//! Avro's binary primitives, both ways: longs as zig-zag varints, bytes and
//! strings with a length prefix, and arrays and maps as counted blocks ending
//! in a zero. The `Reader` also bounds how many items a value may claim, so
//! damaged counts fail instead of allocating.

use super::DecodeError;

pub(super) fn write_long(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// An array's or a map's items: one block with their count (none when empty),
/// then the end marker.
pub(super) fn write_block<T, E>(
    out: &mut Vec<u8>,
    items: impl ExactSizeIterator<Item = T>,
    mut item: impl FnMut(&mut Vec<u8>, T) -> Result<(), E>,
) -> Result<(), E> {
    if items.len() > 0 {
        write_long(out, items.len() as i64);
        for x in items {
            item(out, x)?;
        }
    }
    out.push(0);
    Ok(())
}

pub(super) fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    write_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

pub(super) struct Reader<'a> {
    pub(super) buf: &'a [u8],
    /// Array and map items still allowed: nulls and empty records take no
    /// bytes, so the input's length alone does not bound them.
    pub(super) items: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError("the value is cut short".into()));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(super) fn long(&mut self) -> Result<i64, DecodeError> {
        let mut z: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            z |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok((z >> 1) as i64 ^ -((z & 1) as i64));
            }
        }
        Err(DecodeError("a variable-length integer runs past 10 bytes".into()))
    }

    pub(super) fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = usize::try_from(self.long()?).map_err(|_| DecodeError("negative length".into()))?;
        self.take(n)
    }

    pub(super) fn str(&mut self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| DecodeError("a string is not UTF-8".into()))
    }

    /// Array and map blocks: a count (negative: followed by a byte size), items, until 0.
    pub(super) fn blocks(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<(), DecodeError>,
    ) -> Result<(), DecodeError> {
        loop {
            let mut n = self.long()?;
            if n == 0 {
                return Ok(());
            }
            if n < 0 {
                n = n.checked_neg().ok_or_else(|| DecodeError("a block count out of range".into()))?;
                self.long()?;
            }
            // More items than the value could hold is damage, not a reason to allocate.
            let n_items = usize::try_from(n).unwrap_or(usize::MAX);
            if n_items > self.items {
                return Err(DecodeError(format!("a block of {n} items in {} bytes", self.buf.len())));
            }
            self.items -= n_items;
            for _ in 0..n {
                item(self)?;
            }
        }
    }
}
