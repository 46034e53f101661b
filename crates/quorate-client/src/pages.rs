//! Paged scans: [`ScanPages`] hands out the pages of a scan one at a time, and every way of
//! following pages ([`Client::scan`], [`Client::scan_at`], [`ScanPages`], the recipes'
//! rankings) goes through one [`Cursor`], which checks that the pages move on.

use crate::{Client, ClientError, ReadConsistency, Scanned, ScannedPage};
use quorate_api::limits::SCAN_LIMIT_MAX;

/// Pages in a row without a pair that a scan follows. A read at a revision examines a bounded
/// number of keys per page (16,384), so a range of keys that are not visible at the revision
/// (deleted before it, or created after it) gives pages without a pair that still go on: 1,024
/// of them pass 16 million such keys.
pub const EMPTY_PAGES_MAX: u32 = 1_024;

/// Where a paged scan stands: the start of its next page, the pairs it may still return, and
/// the checks that it moves on. A continuation that is not past where its page started —
/// which a correct node never answers — or more than [`EMPTY_PAGES_MAX`] pages in a row without
/// a pair is an error naming the node ([`ClientError::Unexpected`]), not a short answer: the
/// pairs so far with `more` would look like a reached limit.
#[derive(Debug)]
pub(crate) struct Cursor {
    from: Vec<u8>,
    left: u32,
    page_keys: u32,
    empty_in_a_row: u32,
    /// Where the range goes on past the limit, once the limit is reached.
    more: Option<Vec<u8>>,
    done: bool,
    /// The page that did not move on, if one ended the scan: its node and what it answered.
    failed: Option<(quorate_log::NodeId, String)>,
}

impl Cursor {
    /// A scan from `start` of at most `limit` pairs, asking at most `page_keys` per page.
    pub(crate) fn new(start: &[u8], limit: u32, page_keys: u32) -> Cursor {
        Cursor {
            from: start.to_vec(),
            left: limit,
            page_keys: page_keys.clamp(1, SCAN_LIMIT_MAX),
            empty_in_a_row: 0,
            more: None,
            done: false,
            failed: None,
        }
    }

    /// The start of the next page and the pairs to ask for (`None`: the scan is over).
    pub(crate) fn next_page(&self) -> Option<(&[u8], u32)> {
        (!self.done).then(|| (self.from.as_slice(), self.left.clamp(1, self.page_keys)))
    }

    /// Takes `page`, read from [`Cursor::next_page`]'s start: its pairs count against the
    /// limit, and its continuation becomes the next start.
    pub(crate) fn took(&mut self, page: &ScannedPage) -> Result<(), ClientError> {
        let pairs = u32::try_from(page.kvs.len()).unwrap_or(u32::MAX);
        self.left = self.left.saturating_sub(pairs);
        self.empty_in_a_row = if pairs == 0 { self.empty_in_a_row + 1 } else { 0 };
        match &page.next {
            None => self.done = true,
            Some(next) if self.left == 0 => {
                self.more = Some(next.clone());
                self.done = true;
            }
            Some(next) => {
                if next.as_slice() <= self.from.as_slice() || self.empty_in_a_row > EMPTY_PAGES_MAX {
                    let what = format!(
                        "a scan does not move on: a page from {} continues at {} ({} pages without a pair in a row)",
                        self.from.escape_ascii(),
                        next.escape_ascii(),
                        self.empty_in_a_row
                    );
                    self.done = true;
                    self.failed = Some((page.read.node, what.clone()));
                    return Err(ClientError::Unexpected { node: page.read.node, what });
                }
                self.from.clone_from(next);
            }
        }
        Ok(())
    }

    /// Where the range goes on, if the limit stopped the scan before its end.
    pub(crate) fn more(&self) -> Option<&[u8]> {
        self.more.as_deref()
    }

    /// The error that ended the scan at a page that did not move on, again.
    pub(crate) fn failure(&self) -> Option<ClientError> {
        self.failed.as_ref().map(|(node, what)| ClientError::Unexpected { node: *node, what: what.clone() })
    }
}

/// Follows the pages of a scan from `start` (`page(from, want)` asks for one) until `limit`
/// pairs or the end of the range, as [`Cursor`] checks.
pub(crate) async fn follow_pages<F, Fut>(start: &[u8], limit: u32, mut page: F) -> Result<Scanned, ClientError>
where
    F: FnMut(Vec<u8>, u32) -> Fut,
    Fut: std::future::Future<Output = Result<ScannedPage, ClientError>>,
{
    let mut cursor = Cursor::new(start, limit, u32::MAX);
    let mut kvs = Vec::new();
    loop {
        let (from, want) = cursor.next_page().expect("a cursor that is not done has a next page");
        let p = page(from.to_vec(), want).await?;
        cursor.took(&p)?;
        kvs.extend(p.kvs);
        if cursor.next_page().is_none() {
            return Ok(Scanned { kvs, more: cursor.more().is_some(), read: p.read });
        }
    }
}

/// The pages of a scan, one at a time ([`Client::scan_pages`]): at most `limit` pairs in all,
/// each page its own read (at the scan's revision, if it has one), checked to move on as
/// [`Client::scan`] checks. Holds one page at a time.
#[derive(Debug)]
pub struct ScanPages<'c> {
    client: &'c Client,
    end: Option<Vec<u8>>,
    revision: Option<u64>,
    read: ReadConsistency,
    cursor: Cursor,
}

impl<'c> ScanPages<'c> {
    pub(crate) fn new(
        client: &'c Client,
        start: &[u8],
        end: Option<&[u8]>,
        limit: u32,
        revision: Option<u64>,
        read: ReadConsistency,
    ) -> ScanPages<'c> {
        ScanPages { client, end: end.map(<[u8]>::to_vec), revision, read, cursor: Cursor::new(start, limit, u32::MAX) }
    }

    /// Asks at most `keys` pairs per page (1 to `SCAN_LIMIT_MAX`, the most a node answers in
    /// one page; by default as many as are left, up to that).
    #[must_use]
    pub fn page_keys(mut self, keys: u32) -> ScanPages<'c> {
        self.cursor.page_keys = keys.clamp(1, SCAN_LIMIT_MAX);
        self
    }

    /// The next page (`None`: the range or the limit is reached). An error of the read itself
    /// leaves the scan where it was (the next call asks the same page again); a page that does
    /// not move on ends it with an error, which every later call returns too.
    pub async fn next(&mut self) -> Result<Option<ScannedPage>, ClientError> {
        if let Some(e) = self.cursor.failure() {
            return Err(e);
        }
        let Some((from, want)) = self.cursor.next_page() else { return Ok(None) };
        let end = self.end.as_deref();
        let page = match self.revision {
            Some(revision) => self.client.scan_at_page(from, end, want, revision, self.read).await?,
            None => self.client.scan_page(from, end, want, self.read).await?,
        };
        self.cursor.took(&page)?;
        Ok(Some(page))
    }

    /// Where the range goes on, once the limit stopped the scan before the range's end (pass
    /// it as the start of another scan).
    #[must_use]
    pub fn more(&self) -> Option<&[u8]> {
        self.cursor.more()
    }
}
