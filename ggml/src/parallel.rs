//! The thread pool the kernels run on: persistent workers that spin briefly between
//! operations before they park.
//!
//! A generated token is hundreds of small parallel operations (a 704-row expert projection
//! takes ~100 µs), each separated by a few µs of sequential work. A fork-join pool whose idle
//! workers sleep pays a wake-up (a futex and, on a VM, an inter-processor interrupt) per
//! operation; these workers instead watch a generation counter for [`SPIN`] after each job,
//! so the next operation starts at once, and park only when the process goes idle.
//!
//! ```text
//! caller:  publish job → bump generation → unpark sleepers → take tasks → wait for all acks
//! worker:  spin (then park) until the generation moves → take tasks → ack
//! ```
//!
//! Each thread starts on its own contiguous run of tasks and then helps with the others'
//! (claimed one at a time from atomic counters), so uneven tasks balance. The pool
//! has as many threads as rayon's current pool (`-t`, or `ThreadPool::install`), the caller
//! included. A call from inside a task runs its tasks inline (the outer level already keeps
//! every thread busy); a call while another thread holds the pool goes to rayon.

use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, TryLockError};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use rayon::prelude::*;

/// How long an idle worker watches for the next job before it parks.
const SPIN: Duration = Duration::from_micros(200);

/// The pool's thread count, the caller included: rayon's current pool's (`-t`, or
/// `ThreadPool::install`). Work split for the pool should be sized by this.
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// `f(i)` for every `i` in `0..n_tasks`, on all threads of the pool.
pub fn for_each(n_tasks: usize, f: impl Fn(usize) + Sync) {
    run(n_tasks, &f)
}

/// `f(i, chunk)` for every `chunk_len`-element chunk `i` of `data` (the last may be shorter),
/// on all threads of the pool: [`for_each`] over disjoint `&mut` chunks.
pub fn for_each_chunk_mut<T: Send>(data: &mut [T], chunk_len: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    assert!(chunk_len > 0, "chunks hold at least one element");
    let (len, base) = (data.len(), SendPtr(data.as_mut_ptr()));
    for_each(len.div_ceil(chunk_len), |i| {
        let start = i * chunk_len;
        let n = chunk_len.min(len - start);
        // SAFETY: chunk `i` is `data[start..start + n]`, inside `data`, and no two tasks share
        // an index, so the chunks are disjoint; `data` is borrowed mutably for the whole call.
        let chunk = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), n) };
        f(i, chunk);
    });
}

/// Consecutive columns `first..first + len` of a row-major matrix `width` wide: a task's
/// share of the matrix, disjoint from every other task's ([`for_each_column_block_mut`]).
pub struct ColumnBlock<'a, T> {
    base: *mut T,
    width: usize,
    first: usize,
    len: usize,
    rows: usize,
    _data: std::marker::PhantomData<&'a mut [T]>,
}

impl<T> ColumnBlock<'_, T> {
    /// The first column.
    pub fn first(&self) -> usize {
        self.first
    }

    /// The block's columns of row `r`.
    pub fn row_mut(&mut self, r: usize) -> &mut [T] {
        assert!(r < self.rows, "row {r} of {}", self.rows);
        // SAFETY: `r < rows` and `first + len <= width`, so the run is inside the matrix;
        // no other block holds these columns, and `&mut self` makes this the only live slice.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(r * self.width + self.first), self.len) }
    }
}

/// `f(i, block)` for every block `i` of `block_len` consecutive columns (the last may be
/// narrower) of the row-major matrix `data`, `width` columns wide, on all threads of the pool.
pub fn for_each_column_block_mut<T: Send>(
    data: &mut [T],
    width: usize,
    block_len: usize,
    f: impl Fn(usize, &mut ColumnBlock<'_, T>) + Sync,
) {
    assert!(block_len > 0 && width > 0 && data.len().is_multiple_of(width), "{} is not rows of {width}", data.len());
    let (rows, base) = (data.len() / width, SendPtr(data.as_mut_ptr()));
    for_each(width.div_ceil(block_len), |i| {
        let first = i * block_len;
        let len = block_len.min(width - first);
        let mut block = ColumnBlock { base: base.get(), width, first, len, rows, _data: std::marker::PhantomData };
        f(i, &mut block);
    });
}

/// A pointer that tasks on other threads may use (each to its own disjoint elements).
struct SendPtr<T>(*mut T);

impl<T> SendPtr<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}

// SAFETY: shared only within `for_each_chunk_mut` and `for_each_column_block_mut`, where every
// task touches its own chunk or columns of a `&mut [T]` with `T: Send`.
unsafe impl<T: Send> Sync for SendPtr<T> {}

thread_local! {
    /// Set on the pool's workers, and on a caller while its job runs.
    static IN_POOL: Cell<bool> = const { Cell::new(false) };
}

/// The pool, built on first use and rebuilt when the wanted thread count changes.
static POOL: Mutex<Option<Pool>> = Mutex::new(None);

fn run(n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    let n_threads = threads();
    if n_tasks <= 1 || n_threads <= 1 || IN_POOL.get() {
        return (0..n_tasks).for_each(f);
    }
    let mut guard = match POOL.try_lock() {
        Ok(guard) => guard,
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(TryLockError::WouldBlock) => return (0..n_tasks).into_par_iter().for_each(f),
    };
    if guard.as_ref().is_none_or(|pool| pool.workers.len() + 1 != n_threads) {
        *guard = None; // joins the old workers first
        *guard = Some(Pool::new(n_threads - 1));
    }
    guard.as_ref().expect("just built").run(n_tasks, f);
}

/// One call's tasks; lives on the caller's stack until every worker has acknowledged it.
///
/// The tasks are cut into one contiguous part per thread. Each thread takes its own part's
/// tasks in order, then helps with the others' parts: neighbouring tasks touch neighbouring
/// memory (a matmul's rows), so each thread streams one long run of weights, which the
/// hardware prefetchers follow, instead of hopping between short ones.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    n_tasks: usize,
    /// Per part: how many of its tasks have been claimed.
    claimed: Box<[Counter]>,
    panicked: AtomicBool,
}

impl Job<'_> {
    fn new(f: &(dyn Fn(usize) + Sync), n_tasks: usize, parts: usize) -> Job<'_> {
        let claimed = (0..parts).map(|_| Counter(AtomicUsize::new(0))).collect();
        Job { f, n_tasks, claimed, panicked: AtomicBool::new(false) }
    }

    /// Part `p`'s tasks.
    fn part(&self, p: usize) -> std::ops::Range<usize> {
        let parts = self.claimed.len();
        p * self.n_tasks / parts..(p + 1) * self.n_tasks / parts
    }

    /// Claims and runs tasks until none are left, starting with part `me`; a panic stops
    /// this thread's share and is re-raised by the caller.
    fn work(&self, me: usize) {
        let parts = self.claimed.len();
        let result = catch_unwind(AssertUnwindSafe(|| {
            for p in (me..parts).chain(0..me) {
                let range = self.part(p);
                loop {
                    let i = range.start + self.claimed[p].0.fetch_add(1, Ordering::Relaxed);
                    if i >= range.end {
                        break;
                    }
                    (self.f)(i);
                }
            }
        }));
        if result.is_err() {
            self.panicked.store(true, Ordering::Relaxed);
        }
    }
}

/// A counter alone on its cache lines (two, for the adjacent-line prefetcher), so that the
/// threads claiming from their own parts do not pull one line back and forth.
#[repr(align(128))]
struct Counter(AtomicUsize);

/// What the caller and the workers share.
struct Shared {
    /// Bumped once per job (and once to stop).
    generation: AtomicU64,
    /// The current job, valid from a generation's bump until all its acks are in.
    job: AtomicPtr<Job<'static>>,
    /// Workers done with the current job.
    acks: AtomicUsize,
    /// Per worker: parked, or about to park (the caller must unpark it).
    sleeping: Vec<AtomicBool>,
    stop: AtomicBool,
}

struct Pool {
    shared: Arc<Shared>,
    workers: Vec<(Thread, JoinHandle<()>)>,
}

impl Pool {
    fn new(n_workers: usize) -> Pool {
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            acks: AtomicUsize::new(0),
            sleeping: (0..n_workers).map(|_| AtomicBool::new(false)).collect(),
            stop: AtomicBool::new(false),
        });
        let workers = (0..n_workers)
            .map(|w| {
                let shared = Arc::clone(&shared);
                let handle = std::thread::Builder::new()
                    .name(format!("gemma-worker-{w}"))
                    .spawn(move || worker(&shared, w))
                    .expect("spawning a pool worker");
                (handle.thread().clone(), handle)
            })
            .collect();
        Pool { shared, workers }
    }

    fn run(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        let job = Job::new(f, n_tasks, self.workers.len() + 1);
        let shared = &self.shared;
        shared.acks.store(0, Ordering::Relaxed);
        // The lifetime is erased for the workers; `job` outlives its use, as this function
        // returns only after every worker has acknowledged it.
        shared.job.store((&job as *const Job).cast_mut().cast(), Ordering::Release);
        shared.generation.fetch_add(1, Ordering::SeqCst);
        self.wake();
        IN_POOL.set(true);
        job.work(0);
        IN_POOL.set(false);
        wait_until(|| shared.acks.load(Ordering::Acquire) == self.workers.len());
        shared.job.store(std::ptr::null_mut(), Ordering::Relaxed);
        if job.panicked.load(Ordering::Relaxed) {
            resume_unwind(Box::new("a parallel task panicked"));
        }
    }

    fn wake(&self) {
        for ((thread, _), sleeping) in self.workers.iter().zip(&self.shared.sleeping) {
            if sleeping.load(Ordering::SeqCst) {
                thread.unpark();
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        self.wake();
        for (_, handle) in self.workers.drain(..) {
            let _ = handle.join();
        }
    }
}

/// Spins on `done` (the other threads' shares of a job are about as long as ours).
fn wait_until(done: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !done() {
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(1024) {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

fn worker(shared: &Shared, w: usize) {
    IN_POOL.set(true);
    let mut seen = 0u64;
    loop {
        seen = next_generation(shared, w, seen);
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        // SAFETY: the generation moved after the caller published its job, and the caller
        // keeps the job alive until this worker's ack below.
        let job = unsafe { &*shared.job.load(Ordering::Acquire) };
        job.work(w + 1);
        shared.acks.fetch_add(1, Ordering::Release);
    }
}

/// Waits for the generation to move past `seen`: spinning for [`SPIN`], then parked.
fn next_generation(shared: &Shared, w: usize, seen: u64) -> u64 {
    let start = Instant::now();
    let mut spins = 0u32;
    loop {
        let now = shared.generation.load(Ordering::Acquire);
        if now != seen {
            return now;
        }
        spins = spins.wrapping_add(1);
        if !spins.is_multiple_of(64) || start.elapsed() < SPIN {
            std::hint::spin_loop();
            continue;
        }
        // Announce the sleep, then look once more: a caller that bumped the generation before
        // seeing the flag has been seen here; one after it will unpark this thread.
        shared.sleeping[w].store(true, Ordering::SeqCst);
        if shared.generation.load(Ordering::SeqCst) == seen {
            std::thread::park();
        }
        shared.sleeping[w].store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        pool.install(|| {
            for n in [0, 1, 2, 7, 1000] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                for_each(n, |i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "{n} tasks");
            }
        });
    }

    #[test]
    fn column_blocks_cover_the_matrix_once_with_a_narrow_last_block() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        // 7 rows of 23 columns in blocks of 5: four whole blocks and one of 3.
        let (rows, width) = (7, 23);
        let mut data = vec![0usize; rows * width];
        pool.install(|| {
            for_each_column_block_mut(&mut data, width, 5, |i, block| {
                assert_eq!(block.first(), 5 * i);
                for r in 0..rows {
                    let cols = block.row_mut(r);
                    assert!(cols.len() == 5 || (i == 4 && cols.len() == 3), "block {i}: {}", cols.len());
                    cols.iter_mut().for_each(|x| *x += i + 1);
                }
            })
        });
        assert!(data.iter().enumerate().all(|(j, &x)| x == (j % width) / 5 + 1));
    }

    #[test]
    fn chunks_cover_the_slice_once_with_a_short_last_chunk() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let mut data = vec![0usize; 103];
        pool.install(|| {
            for_each_chunk_mut(&mut data, 10, |i, chunk| {
                assert!(chunk.len() == 10 || (i == 10 && chunk.len() == 3), "chunk {i}: {}", chunk.len());
                chunk.iter_mut().for_each(|x| *x += i + 1);
            })
        });
        assert!(data.iter().enumerate().all(|(j, &x)| x == j / 10 + 1));
    }

    #[test]
    fn nested_calls_and_callers_on_several_threads_all_complete() {
        // Several top-level callers at once (one holds the pool, the others go to rayon), each
        // with nested calls inside its tasks (run inline), after idle gaps long enough for the
        // workers to park.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    pool.install(|| {
                        for round in 0..20 {
                            for_each(4, |_| {
                                for_each(5, |_| {
                                    total.fetch_add(1, Ordering::Relaxed);
                                })
                            });
                            if round % 5 == 0 {
                                std::thread::sleep(Duration::from_millis(1));
                            }
                        }
                    })
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 3 * 20 * 4 * 5);
    }

    #[test]
    fn a_panicking_task_panics_the_caller_and_the_pool_still_works() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        pool.install(|| {
            let caught = catch_unwind(|| for_each(8, |i| assert!(i != 5, "task 5 fails")));
            assert!(caught.is_err());
            let sum = AtomicUsize::new(0);
            for_each(8, |i| {
                sum.fetch_add(i, Ordering::Relaxed);
            });
            assert_eq!(sum.load(Ordering::Relaxed), 28);
        });
    }
}
