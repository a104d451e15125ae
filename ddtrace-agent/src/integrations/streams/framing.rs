//! Length-prefixed framing read incrementally from the capture, for the binary protocols
//! (PostgreSQL, MySQL): a fixed-size header that says how long the body is, then the body. Bodies
//! are kept up to a bound and skipped past it by count: bytes the capture did not keep are fine
//! inside a body, and lose the stream when they fall in a header.

/// What a protocol's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    /// The protocol's message type (PostgreSQL's type byte; 0 where there is none).
    pub kind: u8,
    /// The protocol's sequence number (MySQL's; 0 where there is none).
    pub sequence: u8,
    /// The body's length.
    pub length: usize,
}

/// A protocol's header format.
pub trait Framing {
    /// The size of the next header.
    fn header_size(&self) -> usize;
    /// Reads a whole header; `None`: these bytes are not this protocol.
    fn read_head(&mut self, header: &[u8]) -> Option<FrameHead>;
}

/// One frame, with the first bytes of its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    pub head: FrameHead,
    /// The body's first bytes (at most the reader's `keep`).
    pub body: &'a [u8],
}

/// Why a direction cannot be followed until it is found again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// Bytes the capture did not keep fell in a header.
    Uncaptured,
    /// A header that is not the protocol's.
    Malformed,
}

#[derive(Debug)]
enum State {
    Header,
    Body { head: FrameHead, remaining: usize },
}

/// The reader of one direction of a connection.
#[derive(Debug)]
pub struct FrameReader<F> {
    pub framing: F,
    state: State,
    header: Vec<u8>,
    body: Vec<u8>,
    keep: usize,
}

impl<F: Framing> FrameReader<F> {
    /// A reader keeping the first `keep` bytes of each body.
    pub fn new(framing: F, keep: usize) -> Self {
        Self { framing, state: State::Header, header: Vec::new(), body: Vec::new(), keep }
    }

    /// Whether the reader stands between two frames.
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, State::Header) && self.header.is_empty()
    }

    /// Forgets a frame in progress: the next byte starts a header.
    pub fn reset(&mut self) {
        self.state = State::Header;
        self.header.clear();
        self.body.clear();
    }

    /// Reads `data` then `uncaptured` unseen bytes, calling `on_frame` for each frame
    /// completed. An error leaves the reader reset.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        uncaptured: usize,
        on_frame: &mut dyn FnMut(Frame<'_>),
    ) -> Result<(), Lost> {
        while !data.is_empty() {
            match self.state {
                State::Header => {
                    let size = self.framing.header_size();
                    let take = size.saturating_sub(self.header.len()).min(data.len());
                    self.header.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.header.len() >= size {
                        let Some(head) = self.framing.read_head(&self.header) else {
                            self.reset();
                            return Err(Lost::Malformed);
                        };
                        self.header.clear();
                        self.body.clear();
                        self.body_advanced(head, head.length, on_frame);
                    }
                }
                State::Body { head, remaining } => {
                    let take = remaining.min(data.len());
                    let wanted = self.keep.saturating_sub(self.body.len()).min(take);
                    self.body.extend_from_slice(&data[..wanted]);
                    data = &data[take..];
                    self.body_advanced(head, remaining - take, on_frame);
                }
            }
        }
        if uncaptured == 0 {
            return Ok(());
        }
        match self.state {
            State::Body { head, remaining } if remaining >= uncaptured => {
                self.body_advanced(head, remaining - uncaptured, on_frame);
                Ok(())
            }
            _ => {
                self.reset();
                Err(Lost::Uncaptured)
            }
        }
    }

    fn body_advanced(&mut self, head: FrameHead, remaining: usize, on_frame: &mut dyn FnMut(Frame<'_>)) {
        if remaining == 0 {
            self.state = State::Header;
            on_frame(Frame { head, body: &self.body });
        } else {
            self.state = State::Body { head, remaining };
        }
    }
}
