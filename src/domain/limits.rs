//! Bounds on concurrent work: a number of slots, and a bounded queue in front of them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};

pub struct Limiter {
    what: &'static str,
    total: usize,
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
}

/// A place in a [`Limiter`]'s queue, given back when dropped.
#[derive(Debug)]
pub struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Limiter {
    pub fn new(what: &'static str, slots: usize, max_waiting: usize) -> Limiter {
        Limiter {
            what,
            total: slots,
            slots: Arc::new(Semaphore::new(slots)),
            waiting: AtomicUsize::new(0),
            max_waiting,
        }
    }

    /// A place in the queue, for a request that waits for something else first (a session's
    /// earlier turn); `at_capacity` when the queue is full.
    pub fn queue_place(&self) -> Result<Waiting<'_>> {
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::at_capacity(format!(
                "this worker is running its limit of {}; its queue is full",
                self.what
            )));
        }
        Ok(Waiting(&self.waiting))
    }

    /// The slots taken now, and the places taken in the queue.
    pub fn load(&self) -> (usize, usize) {
        let taken = self.total.saturating_sub(self.slots.available_permits());
        (taken, self.waiting.load(Ordering::SeqCst))
    }

    /// Whether a slot is free now.
    pub fn has_free_slot(&self) -> bool {
        self.slots.available_permits() > 0
    }

    /// A slot, for a request that already holds its place in the queue (given back once the
    /// slot is taken).
    pub async fn acquire_in_place(&self, place: Waiting<'_>) -> Result<OwnedSemaphorePermit> {
        let slot = self.slots.clone().acquire_owned().await;
        drop(place);
        slot.map_err(|_| Error::at_capacity("the worker is shutting down"))
    }

    /// A slot: at once if one is free, after a wait in the queue if not, `at_capacity` when the
    /// queue is full too.
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let _waiting = self.queue_place()?;
        self.slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::at_capacity("the worker is shutting down"))
    }
}

/// A lock being waited for (see [`KeyedLocks::queue_for`]).
pub type PendingLock =
    std::pin::Pin<Box<dyn std::future::Future<Output = OwnedMutexGuard<()>> + Send>>;

/// One async lock per key, so that turns of one session never interleave in this process.
#[derive(Default)]
pub struct KeyedLocks {
    locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    fn entry(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lock) = locks.get(key).and_then(Weak::upgrade) {
            lock
        } else {
            locks.retain(|_, w| w.strong_count() > 0);
            let lock = Arc::new(tokio::sync::Mutex::new(()));
            locks.insert(key.to_string(), Arc::downgrade(&lock));
            lock
        }
    }

    pub async fn lock(&self, key: &str) -> OwnedMutexGuard<()> {
        self.entry(key).lock_owned().await
    }

    /// The lock of `key` as a future of its own: once polled it holds its place in the lock's
    /// queue (first come, first served) until it is dropped.
    pub fn queue_for(&self, key: &str) -> PendingLock {
        Box::pin(self.entry(key).lock_owned())
    }

    /// The lock if it is free now.
    pub fn try_lock(&self, key: &str) -> Option<OwnedMutexGuard<()>> {
        self.entry(key).try_lock_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use std::time::Duration;

    #[tokio::test]
    async fn queue_then_at_capacity() {
        let l = Arc::new(Limiter::new("turns", 1, 1));
        let first = l.acquire().await.unwrap();
        let l2 = l.clone();
        let queued = tokio::spawn(async move { l2.acquire().await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let err = l.acquire().await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::AtCapacity);
        drop(first);
        queued.await.unwrap().unwrap();
        assert!(l.acquire().await.is_ok());
    }

    #[tokio::test]
    async fn keyed_locks_serialise_one_key_only() {
        let locks = KeyedLocks::default();
        let a = locks.lock("a").await;
        let b = tokio::time::timeout(Duration::from_millis(100), locks.lock("b")).await;
        assert!(b.is_ok(), "another key is not blocked");
        let again = tokio::time::timeout(Duration::from_millis(100), locks.lock("a")).await;
        assert!(again.is_err(), "the same key waits");
        assert!(locks.try_lock("a").is_none(), "try_lock does not wait");
        drop(a);
        assert!(locks.try_lock("a").is_some());
        assert!(
            tokio::time::timeout(Duration::from_millis(100), locks.lock("a"))
                .await
                .is_ok()
        );
    }

    #[test]
    fn queue_places_count_against_the_queue() {
        let l = Limiter::new("turns", 1, 2);
        let a = l.queue_place().unwrap();
        let _b = l.queue_place().unwrap();
        assert_eq!(l.queue_place().unwrap_err().kind, ErrorKind::AtCapacity);
        drop(a);
        assert!(l.queue_place().is_ok(), "a place given back is free again");
    }
}
