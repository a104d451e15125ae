//! Line numbers from a code object's line table, in each of CPython's three encodings
//! (`Objects/lnotab_notes.txt` for 3.8-3.10, `Objects/locations.md` for 3.11+). Pure
//! functions over the table's bytes: a malformed table ends the walk, never a panic.

use super::layout::LineTableFormat;

/// The line of the instruction at `offset` (bytes for 3.8-3.10, 2-byte code units for 3.11+),
/// starting from the code's first line; `None` when the table gives that instruction no line.
pub fn line_at(format: LineTableFormat, table: &[u8], first_line: i64, offset: i64) -> Option<i64> {
    match format {
        LineTableFormat::Lnotab => Some(lnotab(table, first_line, offset)),
        LineTableFormat::Pairs310 => pairs_310(table, first_line, offset),
        LineTableFormat::Locations => locations(table, first_line, offset),
    }
}

/// 3.8, 3.9: (address delta, signed line delta) byte pairs; the line of the last entry at or
/// before the address.
fn lnotab(table: &[u8], first_line: i64, offset: i64) -> i64 {
    let mut address = 0i64;
    let mut line = first_line;
    for pair in table.chunks_exact(2) {
        address += i64::from(pair[0]);
        if address > offset {
            break;
        }
        line += i64::from(pair[1] as i8);
    }
    line
}

/// 3.10: (length in bytes, signed line delta) pairs, one per range; -128 is a range without
/// a line.
fn pairs_310(table: &[u8], first_line: i64, offset: i64) -> Option<i64> {
    let mut end = 0i64;
    let mut line = first_line;
    for pair in table.chunks_exact(2) {
        let start = end;
        end += i64::from(pair[0]);
        let delta = pair[1] as i8;
        if delta != -128 {
            line += i64::from(delta);
        }
        if (start..end).contains(&offset) {
            return (delta != -128).then_some(line);
        }
    }
    None
}

/// 3.11+: entries of a first byte (bit 7 set, a 4-bit kind, the range length - 1 in code units)
/// and kind-dependent varints.
fn locations(table: &[u8], first_line: i64, offset: i64) -> Option<i64> {
    let mut reader = Varints { bytes: table, at: 0 };
    let mut address = 0i64;
    let mut line = first_line;
    while let Some(first) = reader.byte() {
        if first & 0x80 == 0 {
            return None;
        }
        let kind = (first >> 3) & 15;
        let length = i64::from(first & 7) + 1;
        let has_line = match kind {
            // Short forms: same line, one byte of columns.
            0..=9 => {
                reader.byte()?;
                true
            }
            // One-line forms: line + 0, 1 or 2, two bytes of columns.
            10..=12 => {
                line += i64::from(kind - 10);
                reader.byte()?;
                reader.byte()?;
                true
            }
            // No columns.
            13 => {
                line += reader.signed()?;
                true
            }
            // Long form: line delta, end line delta, start and end columns.
            14 => {
                line += reader.signed()?;
                reader.unsigned()?;
                reader.unsigned()?;
                reader.unsigned()?;
                true
            }
            _ => false,
        };
        if (address..address + length).contains(&offset) {
            return has_line.then_some(line);
        }
        address += length;
    }
    None
}

struct Varints<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Varints<'_> {
    fn byte(&mut self) -> Option<u8> {
        let byte = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(byte)
    }

    /// 6-bit groups, least significant first; bit 6 says another follows.
    fn unsigned(&mut self) -> Option<i64> {
        let mut value = 0i64;
        for shift in (0..60).step_by(6) {
            let byte = self.byte()?;
            value |= i64::from(byte & 63) << shift;
            if byte & 64 == 0 {
                return Some(value);
            }
        }
        None
    }

    /// The sign in the lowest bit.
    fn signed(&mut self) -> Option<i64> {
        let value = self.unsigned()?;
        Some(if value & 1 != 0 { -(value >> 1) } else { value >> 1 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lnotab_takes_the_last_entry_at_or_before_the_offset() {
        // Lines 10 (bytes 0-5), 11 (6-13), 13 (14-).
        let table = [6, 1, 8, 2];
        assert_eq!(line_at(LineTableFormat::Lnotab, &table, 10, 0), Some(10));
        assert_eq!(line_at(LineTableFormat::Lnotab, &table, 10, 6), Some(11));
        assert_eq!(line_at(LineTableFormat::Lnotab, &table, 10, 13), Some(11));
        assert_eq!(line_at(LineTableFormat::Lnotab, &table, 10, 40), Some(13));
    }

    #[test]
    fn pairs_of_3_10_have_ranges_without_lines() {
        // 4 bytes at line +1, 2 bytes without a line, 6 bytes at line +2 (from the last line).
        let table = [4, 1, 2, 0x80, 6, 2];
        assert_eq!(line_at(LineTableFormat::Pairs310, &table, 20, 2), Some(21));
        assert_eq!(line_at(LineTableFormat::Pairs310, &table, 20, 5), None);
        assert_eq!(line_at(LineTableFormat::Pairs310, &table, 20, 7), Some(23));
        assert_eq!(line_at(LineTableFormat::Pairs310, &table, 20, 12), None);
    }

    #[test]
    fn location_table_forms() {
        let table = [
            0x80 | (13 << 3),     // no columns, 1 unit: line + svarint
            2,                    // +1
            0x80 | (10 << 3) | 1, // one-line form, +0, 2 units
            5,
            9,
            0x80 | (14 << 3), // long form, 1 unit
            0x40 | 4,         // svarint, continued: +2 + (1 << 6) / 2 ...
            1,
            0,
            0,
            0,
            0x80 | (15 << 3), // no location
            0x80 | (11 << 3), // one-line form, +1
            0,
            0,
        ];
        assert_eq!(line_at(LineTableFormat::Locations, &table, 100, 0), Some(101));
        assert_eq!(line_at(LineTableFormat::Locations, &table, 100, 2), Some(101));
        // (4 | 1 << 6) = 68, even: +34.
        assert_eq!(line_at(LineTableFormat::Locations, &table, 100, 3), Some(135));
        assert_eq!(line_at(LineTableFormat::Locations, &table, 100, 4), None);
        assert_eq!(line_at(LineTableFormat::Locations, &table, 100, 5), Some(136));
        assert_eq!(line_at(LineTableFormat::Locations, &table, 100, 6), None, "past the table");
    }

    #[test]
    fn malformed_tables_give_no_line() {
        assert_eq!(line_at(LineTableFormat::Locations, &[0x05, 0x80], 1, 0), None);
        assert_eq!(line_at(LineTableFormat::Locations, &[0x80 | (14 << 3), 0x40, 0x40], 1, 0), None);
        assert_eq!(line_at(LineTableFormat::Pairs310, &[3], 1, 0), None);
    }
}
