//! JSONL framing for uploads: chunks of bytes in, complete lines out.

use super::BatchError;

/// Splits chunks of bytes into lines (`\n` or `\r\n`), skipping blank ones.
#[derive(Default)]
pub struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    /// The complete lines in `chunk` (with what came before it).
    pub fn push(&mut self, chunk: &[u8], max_line: usize) -> Result<Vec<Vec<u8>>, BatchError> {
        let mut out = Vec::new();
        let mut rest = chunk;
        while let Some(at) = rest.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&rest[..at]);
            rest = &rest[at + 1..];
            let line = std::mem::take(&mut self.partial);
            if let Some(line) = Self::clean(line) {
                out.push(line);
            }
        }
        self.partial.extend_from_slice(rest);
        if self.partial.len() > max_line {
            return Err(BatchError::NotJsonl(format!(
                "a line is longer than {max_line} bytes"
            )));
        }
        Ok(out)
    }

    /// The last line, if the data did not end with a newline.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        Self::clean(std::mem::take(&mut self.partial))
    }

    fn clean(mut line: Vec<u8>) -> Option<Vec<u8>> {
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        (!line.iter().all(u8::is_ascii_whitespace)).then_some(line)
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn lines_skip_blanks_and_strip_cr() {
        let mut l = Lines::default();
        let mut all = l.push(b"a\r\n\nb", 100).unwrap();
        all.extend(l.push(b"c\n  \nd", 100).unwrap());
        all.extend(l.finish());
        assert_eq!(all, vec![b"a".to_vec(), b"bc".to_vec(), b"d".to_vec()]);
        assert!(Lines::default().push(&[b'x'; 20], 10).is_err());
    }
}
