//! A reader in front of a layer's tar stream that refuses oversized metadata entries.
//!
//! The `tar` crate reads a GNU long name or long link (`L`, `K`) and a PAX header (`x`, `g`)
//! whole into memory before the entry they describe, however large they say they are: a layer of
//! 255 KB carrying a 256 MiB long name took 2.2 GB of the server's memory (and the name came
//! back twice in the error). No file system takes a name over `PATH_MAX` (4 KiB), and PAX
//! records worth having are small, so this stops any such entry over [`MAX_METADATA_ENTRY`]
//! before the `tar` crate reads it.
//!
//! It follows the archive's block structure as the bytes pass: each 512-byte header, the
//! entry's data rounded up to whole blocks, the extension blocks of an old GNU sparse header,
//! and a PAX `size` record, which overrides the size in the next header.

use std::io::{self, Read};

/// The largest long name, long link or PAX header a layer may carry.
pub const MAX_METADATA_ENTRY: u64 = 64 << 10;

const BLOCK: usize = 512;

pub struct MetadataLimit<R> {
    inner: R,
    /// Bytes of the current header block seen so far.
    header: Box<[u8; BLOCK]>,
    filled: usize,
    /// Bytes to pass through before the next header.
    skip: u64,
    /// What comes next after the header being read.
    expecting: Expecting,
    /// A PAX header's data, kept (it is small: see above) to find a `size` record.
    pax: Option<Vec<u8>>,
    /// The length of that data, without its padding.
    pax_len: usize,
    /// The size a PAX header set for the next entry.
    pax_size: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Expecting {
    Header,
    /// Extension blocks of an old GNU sparse header, then `data` bytes of the entry.
    SparseExtension {
        data: u64,
    },
}

impl<R: Read> MetadataLimit<R> {
    pub fn new(inner: R) -> MetadataLimit<R> {
        MetadataLimit {
            inner,
            header: Box::new([0; BLOCK]),
            filled: 0,
            skip: 0,
            expecting: Expecting::Header,
            pax: None,
            pax_len: 0,
            pax_size: None,
        }
    }

    /// Follows the bytes `buf` that just passed.
    fn follow(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            if self.skip > 0 {
                let n = (self.skip.min(buf.len() as u64)) as usize;
                if let Some(pax) = &mut self.pax {
                    pax.extend_from_slice(&buf[..n]);
                }
                self.skip -= n as u64;
                buf = &buf[n..];
                if self.skip == 0 {
                    if let Some(pax) = self.pax.take() {
                        // Without the padding to the block's end.
                        let pax = &pax[..self.pax_len.min(pax.len())];
                        self.pax_size = pax_size(pax).or(self.pax_size);
                    }
                }
                continue;
            }
            let n = (BLOCK - self.filled).min(buf.len());
            self.header[self.filled..self.filled + n].copy_from_slice(&buf[..n]);
            self.filled += n;
            buf = &buf[n..];
            if self.filled == BLOCK {
                self.filled = 0;
                self.on_block()?;
            }
        }
        Ok(())
    }

    /// A whole block where a header (or a sparse extension block) belongs.
    fn on_block(&mut self) -> io::Result<()> {
        let h = &self.header;
        if let Expecting::SparseExtension { data } = self.expecting {
            // Byte 504 of an extension block says whether another one follows.
            if h[504] == 0 {
                self.expecting = Expecting::Header;
                self.skip = data;
            }
            return Ok(());
        }
        if h.iter().all(|&b| b == 0) {
            return Ok(()); // the end-of-archive blocks
        }
        let kind = h[156];
        let declared = parse_size(&h[124..136])
            .ok_or_else(|| invalid("a tar header with an unreadable size field"))?;
        let size = match kind {
            // A PAX size applies to the next real entry, not to metadata entries.
            b'L' | b'K' | b'x' | b'g' => declared,
            _ => self.pax_size.take().unwrap_or(declared),
        };
        if matches!(kind, b'L' | b'K' | b'x' | b'g') && size > MAX_METADATA_ENTRY {
            let what = match kind {
                b'L' => "a long name",
                b'K' => "a long link target",
                _ => "an extended (PAX) header",
            };
            return Err(invalid(&format!(
                "the layer has {what} of {size} bytes (at most {MAX_METADATA_ENTRY}); \
                 no file system takes names that long"
            )));
        }
        if kind == b'x' {
            self.pax = Some(Vec::with_capacity(size as usize));
            self.pax_len = size as usize;
        }
        let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        // An old GNU sparse header: byte 482 says extension blocks follow it.
        if kind == b'S' && h[482] != 0 {
            self.expecting = Expecting::SparseExtension { data: padded };
        } else {
            self.skip = padded;
        }
        if self.skip == 0 {
            if let Some(pax) = self.pax.take() {
                self.pax_size = pax_size(&pax).or(self.pax_size);
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for MetadataLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.follow(&buf[..n])?;
        Ok(n)
    }
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_string())
}

/// A header's numeric field: octal digits (padded with spaces or NULs), or the base-256 form
/// (first byte's high bit set) large sizes use.
fn parse_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        // The low 7 bits of the first byte and the rest, big-endian; over 64 bits is no size.
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let digits: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|b| *b == b' ' || *b == 0)
        .take_while(|b| (b'0'..=b'7').contains(b))
        .collect();
    if digits.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&digits).ok()?, 8).ok()
}

/// The `size` record of a PAX header's data (`<len> size=<n>\n` records), if any.
fn pax_size(data: &[u8]) -> Option<u64> {
    let mut size = None;
    let mut rest = data;
    while !rest.is_empty() {
        let Some(space) = rest.iter().position(|&b| b == b' ') else {
            return size;
        };
        let Some(len) = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|l| l.parse::<usize>().ok())
        else {
            return size;
        };
        if len <= space || len > rest.len() {
            return size;
        }
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(v) = record.strip_prefix(b"size=") {
            size = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok());
        }
        rest = &rest[len..];
    }
    size
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        // Small reads, so block boundaries fall anywhere in a read.
        let mut r = MetadataLimit::new(io::BufReader::with_capacity(37, bytes));
        let mut buf = [0u8; 100];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data).unwrap();
    }

    #[test]
    fn ordinary_archives_pass_unchanged() {
        let mut b = tar::Builder::new(Vec::new());
        file(&mut b, "a.txt", b"hello");
        // Over 100 bytes: the builder writes a GNU long name first.
        let long = format!("dir/{}", "n".repeat(300));
        file(&mut b, &long, &[7u8; 1500]);
        // A file whose data looks like a huge long-name header must not be taken for one.
        let mut fake = tar::Header::new_gnu();
        fake.set_entry_type(tar::EntryType::GNULongName);
        fake.set_size(1 << 40);
        fake.set_cksum();
        file(&mut b, "looks-like-a-header", fake.as_bytes());
        let mut pax = tar::Builder::new(Vec::new());
        pax.append_pax_extensions([("path", b"p/with-pax".as_slice())])
            .unwrap();
        file(&mut pax, "p", b"pax'd");
        let archive = [b.into_inner().unwrap(), pax.into_inner().unwrap()].concat();
        assert_eq!(read_all(&archive).unwrap(), archive);
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(MetadataLimit::new(archive.as_slice()));
        for e in ar.entries().unwrap() {
            names.push(e.unwrap().path().unwrap().display().to_string());
        }
        assert_eq!(names[..3], ["a.txt", long.as_str(), "looks-like-a-header"]);
    }

    #[test]
    fn a_pax_size_record_moves_the_next_header() {
        // The ustar size says 0, the PAX record 700: the data must be skipped as 700 bytes.
        let data = vec![b'x'; 700];
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("size", b"700".as_slice())])
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_path("big").unwrap();
        h.set_size(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let mut archive = b.into_inner().unwrap();
        archive.truncate(archive.len() - 2 * BLOCK); // the end-of-archive blocks
        archive.extend_from_slice(h.as_bytes());
        archive.extend_from_slice(&data);
        archive.extend_from_slice(&[0u8; 324]); // to the block's end
                                                // Inside those 700 bytes, something shaped like a huge long-name header.
        let mut fake = tar::Header::new_gnu();
        fake.set_entry_type(tar::EntryType::GNULongName);
        fake.set_size(1 << 40);
        fake.set_cksum();
        archive[1536..1536 + 512].copy_from_slice(fake.as_bytes());
        assert_eq!(read_all(&archive).unwrap(), archive);
    }

    #[test]
    fn an_oversized_long_name_or_pax_header_is_refused_before_it_is_read() {
        for kind in [
            tar::EntryType::GNULongName,
            tar::EntryType::GNULongLink,
            tar::EntryType::XHeader,
            tar::EntryType::XGlobalHeader,
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(MAX_METADATA_ENTRY + 1);
            h.set_cksum();
            let mut archive = h.as_bytes().to_vec();
            archive.extend(std::iter::repeat_n(b'a', 70 << 10));
            let e = read_all(&archive).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            assert!(e.to_string().contains("at most 65536"), "{e}");
        }
        // At the limit it passes.
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::GNULongName);
        h.set_size(MAX_METADATA_ENTRY);
        h.set_cksum();
        let mut archive = h.as_bytes().to_vec();
        archive.extend(std::iter::repeat_n(b'a', MAX_METADATA_ENTRY as usize));
        assert!(read_all(&archive).is_ok());
    }

    #[test]
    fn sizes_read_in_octal_and_base_256() {
        assert_eq!(parse_size(b"00000001750\0"), Some(1000));
        assert_eq!(parse_size(b"     1750 \0\0"), Some(1000));
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[11] = 1;
        big[10] = 2;
        assert_eq!(parse_size(&big), Some(513));
        assert_eq!(pax_size(b"12 size=700\n20 path=somewhere\n"), Some(700));
    }
}
