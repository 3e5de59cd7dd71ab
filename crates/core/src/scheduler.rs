//! Work units spread over several devices, results back in input order.
//!
//! ```text
//! source (reader + translation) ──items in order──▶ scheduler ──queue──▶ worker per device
//!                                                      ▲  │                    │
//!                                     done / failed ───┘  └── in order ──▶ handler (writers)
//! ```
//! The source yields items in input order: a job to compute, or a result that is already there
//! (a unit a journal holds). Jobs go to one shared queue; every worker (one thread per device,
//! with its own copy of the models) takes the next job whenever it is free, so faster devices
//! take more. Results come back in any order: [`Handler::computed`] sees each one as soon as it
//! is finished (the journal records it there), and a reorder buffer hands them to
//! [`Handler::in_order`] in input order. At most `max_in_flight` jobs are queued or being
//! computed, which bounds memory and keeps the reader just ahead of the devices.
//!
//! A worker that fails hands back the jobs it held; they are queued again, first, for the other
//! workers, with a warning naming the device. A job that fails on two workers, or a failure when
//! no other worker is left, ends the run with that error: nothing is written as complete, so a
//! unit is never lost or written twice.
//!
//! The scheduler knows nothing of models or files: tests drive it with workers that compute on
//! the CPU, fail on cue or take random time.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};

use anyhow::{anyhow, Context};
use crossbeam_channel::{never, select, unbounded, Receiver, Sender};

/// An error that is not the device's (bad input, impossible options): the run stops at once
/// instead of trying the job on another device. Made with [`not_the_device`].
#[derive(Debug)]
pub struct NotTheDevice(pub anyhow::Error);

impl std::fmt::Display for NotTheDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for NotTheDevice {}

/// Marks `e` as [`NotTheDevice`].
pub fn not_the_device(e: anyhow::Error) -> anyhow::Error {
    if e.downcast_ref::<NotTheDevice>().is_some() {
        return e;
    }
    anyhow::Error::new(NotTheDevice(e))
}

/// One item of the source, in input order.
pub enum Item<J, O> {
    /// Work for a device.
    Compute(J),
    /// A result that needs no device (e.g. read back from a journal).
    Ready(O),
}

/// What the scheduler calls with results.
pub trait Handler<O> {
    /// A job's result, as soon as a worker finished it (in any order).
    fn computed(&mut self, pos: u64, out: &O) -> anyhow::Result<()>;
    /// Every result, computed or ready, in input order.
    fn in_order(&mut self, pos: u64, out: O) -> anyhow::Result<()>;
}

/// A device's side of the scheduler: takes jobs and reports their results.
pub trait Worker<J, O>: Send {
    /// Name for messages (e.g. `cuda:1`).
    fn name(&self) -> String;
    /// Computes jobs from `lane` until [`Lane::take`] returns `None`. A worker may take more
    /// jobs before it reports the earlier ones (to overlap host and device work, or to batch
    /// jobs together), with [`Lane::try_take`]: it waits in [`Lane::take`] only when it holds
    /// none. An error means the device failed: the jobs it took and did not report go to the
    /// others.
    fn run(&mut self, lane: &mut Lane<J, O>) -> anyhow::Result<()>;
}

/// The queue of jobs shared by the workers; retried jobs go to its front.
struct Queue<J> {
    state: Mutex<QueueState<J>>,
    ready: Condvar,
}

struct QueueState<J> {
    jobs: VecDeque<(u64, Arc<J>)>,
    closed: bool,
}

impl<J> Queue<J> {
    fn new() -> Self {
        Queue {
            state: Mutex::new(QueueState {
                jobs: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState<J>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, pos: u64, job: Arc<J>, front: bool) {
        let mut s = self.lock();
        if front {
            s.jobs.push_front((pos, job));
        } else {
            s.jobs.push_back((pos, job));
        }
        drop(s);
        self.ready.notify_one();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// The next job if one is waiting.
    fn try_pop(&self) -> Option<(u64, Arc<J>)> {
        self.lock().jobs.pop_front()
    }

    /// The next job; `None` once the queue is closed and empty.
    fn pop(&self) -> Option<(u64, Arc<J>)> {
        let mut s = self.lock();
        loop {
            if let Some(job) = s.jobs.pop_front() {
                return Some(job);
            }
            if s.closed {
                return None;
            }
            s = self.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

enum Event<J, O> {
    Done {
        worker: usize,
        pos: u64,
        out: O,
    },
    Exited {
        name: String,
        error: Option<anyhow::Error>,
        held: Vec<(u64, Arc<J>)>,
    },
}

/// A worker's connection to the scheduler.
pub struct Lane<J, O> {
    queue: Arc<Queue<J>>,
    events: Sender<Event<J, O>>,
    /// Jobs taken and not yet reported, handed back if the worker fails.
    held: Vec<(u64, Arc<J>)>,
    worker: usize,
}

impl<J, O> Lane<J, O> {
    /// The next job (its position in input order and its data); blocks until there is one.
    /// `None` when every job has been handed out and the run is ending.
    ///
    /// Only for a worker that holds no unreported job: the scheduler hands out at most
    /// `max_in_flight` jobs and may be waiting for the held ones, so waiting here while
    /// holding one can deadlock. A worker that keeps jobs in flight uses [`Lane::try_take`]
    /// and reports what it holds when nothing is queued.
    pub fn take(&mut self) -> Option<(u64, Arc<J>)> {
        debug_assert!(
            self.held.is_empty(),
            "a worker waits for a job while holding {} unreported",
            self.held.len()
        );
        let job = self.queue.pop()?;
        self.held.push((job.0, job.1.clone()));
        Some(job)
    }

    /// The next job if one is waiting now (never blocks).
    pub fn try_take(&mut self) -> Option<(u64, Arc<J>)> {
        let job = self.queue.try_pop()?;
        self.held.push((job.0, job.1.clone()));
        Some(job)
    }

    /// Reports the result of job `pos`.
    pub fn done(&mut self, pos: u64, out: O) {
        self.held.retain(|(p, _)| *p != pos);
        let _ = self.events.send(Event::Done {
            worker: self.worker,
            pos,
            out,
        });
    }

    /// This worker's number (its position in the list given to [`run`]).
    pub fn worker(&self) -> usize {
        self.worker
    }
}

/// Counters of a scheduled run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduleReport {
    /// Jobs computed by each worker.
    pub computed: Vec<u64>,
    /// Items that were ready (not computed).
    pub ready: u64,
    /// Jobs that were computed again after their worker failed.
    pub retried: u64,
    /// Names of the workers that failed (the run went on without them).
    pub failed_workers: Vec<String>,
}

/// Runs every item of `source` (in input order, an error ends the run) through `workers` and
/// `handler`; see the module documentation.
pub fn run<J, O, W, H>(
    source: Receiver<anyhow::Result<Item<J, O>>>,
    workers: Vec<W>,
    max_in_flight: usize,
    handler: &mut H,
) -> anyhow::Result<ScheduleReport>
where
    J: Send + Sync + 'static,
    O: Send + 'static,
    W: Worker<J, O> + 'static,
    H: Handler<O>,
{
    if workers.is_empty() {
        return Err(anyhow!("no device to run on"));
    }
    let queue = Arc::new(Queue::<J>::new());
    let (events_tx, events) = unbounded::<Event<J, O>>();
    let mut report = ScheduleReport {
        computed: vec![0; workers.len()],
        ..Default::default()
    };
    let mut threads = Vec::with_capacity(workers.len());
    for (i, mut worker) in workers.into_iter().enumerate() {
        let mut lane = Lane {
            queue: queue.clone(),
            events: events_tx.clone(),
            held: Vec::new(),
            worker: i,
        };
        let name = worker.name();
        let thread = std::thread::Builder::new()
            .name(format!("device-{i}"))
            .spawn(move || {
                // A panic is a failure of this worker like any other.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    worker.run(&mut lane)
                }))
                .unwrap_or_else(|p| {
                    let why = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    Err(anyhow!("panicked: {why}"))
                });
                let _ = lane.events.send(Event::Exited {
                    name,
                    error: result.err(),
                    held: std::mem::take(&mut lane.held),
                });
            })
            .context("cannot start a device thread")?;
        threads.push(thread);
    }
    drop(events_tx);

    let result = schedule(
        &source,
        &events,
        &queue,
        max_in_flight.max(1),
        handler,
        &mut report,
    );
    queue.close();
    drop(source);
    // Workers still busy finish their job (its result is dropped) and see the closed queue.
    for t in threads {
        let _ = t.join();
    }
    result.map(|()| report)
}

fn schedule<J, O, H: Handler<O>>(
    source: &Receiver<anyhow::Result<Item<J, O>>>,
    events: &Receiver<Event<J, O>>,
    queue: &Queue<J>,
    max_in_flight: usize,
    handler: &mut H,
    report: &mut ScheduleReport,
) -> anyhow::Result<()> {
    let mut alive = report.computed.len();
    let mut next_pos = 0u64; // position of the next source item
    let mut write_pos = 0u64; // next position to hand to `in_order`
    let mut finished: BTreeMap<u64, O> = BTreeMap::new();
    let mut in_flight = 0usize;
    let mut source_done = false;
    let mut attempts: HashMap<u64, u32> = HashMap::new();
    let no_items = never();
    loop {
        while let Some(out) = finished.remove(&write_pos) {
            handler.in_order(write_pos, out)?;
            write_pos += 1;
        }
        if source_done && write_pos == next_pos {
            return Ok(());
        }
        if alive == 0 {
            return Err(anyhow!("every device stopped with work left"));
        }
        let items = if !source_done && in_flight < max_in_flight {
            source
        } else {
            &no_items
        };
        select! {
            recv(items) -> item => match item {
                Ok(Ok(Item::Compute(job))) => {
                    queue.push(next_pos, Arc::new(job), false);
                    in_flight += 1;
                    next_pos += 1;
                }
                Ok(Ok(Item::Ready(out))) => {
                    finished.insert(next_pos, out);
                    report.ready += 1;
                    next_pos += 1;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    source_done = true;
                    queue.close();
                }
            },
            recv(events) -> event => match event {
                Ok(Event::Done { worker, pos, out }) => {
                    report.computed[worker] += 1;
                    handler.computed(pos, &out)?;
                    finished.insert(pos, out);
                    in_flight -= 1;
                }
                Ok(Event::Exited { name, error, held, .. }) => {
                    alive -= 1;
                    let Some(error) = error else { continue };
                    let error = match error.downcast::<NotTheDevice>() {
                        Ok(NotTheDevice(inner)) => return Err(inner),
                        Err(error) => error,
                    };
                    if alive == 0 {
                        return Err(error.context(format!("{name} failed")));
                    }
                    for (pos, _) in &held {
                        let n = attempts.entry(*pos).or_insert(0);
                        *n += 1;
                        if *n >= 2 {
                            return Err(error.context(format!(
                                "{name} failed on a work unit that had already failed on \
                                 another device"
                            )));
                        }
                    }
                    tracing::warn!(
                        "{name} failed: {error:#}; its {} work unit(s) go to the other {alive} \
                         device(s)",
                        held.len()
                    );
                    report.failed_workers.push(name);
                    report.retried += held.len() as u64;
                    // Back to the front, in input order.
                    for (pos, job) in held.into_iter().rev() {
                        queue.push(pos, job, true);
                    }
                }
                Err(_) => return Err(anyhow!("every device thread ended with work left")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;
    use std::time::Duration;

    /// Squares numbers; `fail_at`: fails when taking its n-th job; `delay`: ms per job; with
    /// `overlap`, takes the next job before reporting the current one, and with `group` every
    /// job queued behind it too (as the GPU worker does), waiting only when it holds none.
    struct Squarer {
        name: String,
        fail_at: Option<usize>,
        delay_ms: u64,
        overlap: bool,
        group: bool,
        taken: usize,
    }

    impl Squarer {
        fn new(name: &str) -> Self {
            Squarer {
                name: name.into(),
                fail_at: None,
                delay_ms: 0,
                overlap: false,
                group: false,
                taken: 0,
            }
        }

        fn count(&mut self) -> anyhow::Result<()> {
            self.taken += 1;
            if Some(self.taken) == self.fail_at {
                anyhow::bail!("injected failure");
            }
            Ok(())
        }

        fn finish(&self, lane: &mut Lane<u64, (u64, usize)>, jobs: Vec<(u64, Arc<u64>)>) {
            std::thread::sleep(Duration::from_millis(self.delay_ms));
            for (pos, job) in jobs {
                lane.done(pos, (*job * *job, lane.worker()));
            }
        }
    }

    impl Worker<u64, (u64, usize)> for Squarer {
        fn name(&self) -> String {
            self.name.clone()
        }
        fn run(&mut self, lane: &mut Lane<u64, (u64, usize)>) -> anyhow::Result<()> {
            let mut pending: Vec<(u64, Arc<u64>)> = Vec::new();
            loop {
                let first = if pending.is_empty() {
                    lane.take()
                } else {
                    lane.try_take()
                };
                let Some(first) = first else {
                    if pending.is_empty() {
                        return Ok(());
                    }
                    self.finish(lane, std::mem::take(&mut pending));
                    continue;
                };
                self.count()?;
                let mut jobs = vec![first];
                while self.group {
                    let Some(next) = lane.try_take() else { break };
                    self.count()?;
                    jobs.push(next);
                }
                let previous = std::mem::take(&mut pending);
                if !previous.is_empty() {
                    self.finish(lane, previous);
                }
                if self.overlap {
                    pending = jobs;
                } else {
                    self.finish(lane, jobs);
                }
            }
        }
    }

    #[derive(Default)]
    struct Collect {
        computed: Vec<u64>,
        in_order: Vec<(u64, (u64, usize))>,
        fail_in_order_at: Option<u64>,
    }

    impl Handler<(u64, usize)> for Collect {
        fn computed(&mut self, pos: u64, _: &(u64, usize)) -> anyhow::Result<()> {
            self.computed.push(pos);
            Ok(())
        }
        fn in_order(&mut self, pos: u64, out: (u64, usize)) -> anyhow::Result<()> {
            if Some(pos) == self.fail_in_order_at {
                anyhow::bail!("writer failed");
            }
            self.in_order.push((pos, out));
            Ok(())
        }
    }

    /// Items 0..n; every 5th is ready (its square is known), the rest computed.
    fn source(n: u64) -> Receiver<anyhow::Result<Item<u64, (u64, usize)>>> {
        let (tx, rx) = bounded(2);
        std::thread::spawn(move || {
            for i in 0..n {
                let item = if i % 5 == 0 {
                    Item::Ready((i * i, usize::MAX))
                } else {
                    Item::Compute(i)
                };
                if tx.send(Ok(item)).is_err() {
                    return;
                }
            }
        });
        rx
    }

    fn check_order(c: &Collect, n: u64) {
        let values: Vec<u64> = c.in_order.iter().map(|(_, (v, _))| *v).collect();
        let want: Vec<u64> = (0..n).map(|i| i * i).collect();
        assert_eq!(values, want);
        let positions: Vec<u64> = c.in_order.iter().map(|(p, _)| *p).collect();
        assert_eq!(positions, (0..n).collect::<Vec<_>>());
        let mut computed = c.computed.clone();
        computed.sort_unstable();
        let want: Vec<u64> = (0..n).filter(|i| i % 5 != 0).collect();
        assert_eq!(computed, want, "each job computed exactly once");
    }

    #[test]
    fn results_come_in_input_order_from_several_workers() {
        for (overlap, group) in [(false, false), (true, false), (true, true)] {
            let workers: Vec<Squarer> = (0..3)
                .map(|i| Squarer {
                    delay_ms: [0, 1, 3][i],
                    overlap,
                    group,
                    ..Squarer::new(&format!("w{i}"))
                })
                .collect();
            let mut c = Collect::default();
            let report = run(source(200), workers, 6, &mut c).unwrap();
            check_order(&c, 200);
            assert_eq!(report.ready, 40);
            assert_eq!(report.computed.len(), 3);
            // The fast worker took work (the split itself depends on timing).
            assert!(c.in_order.iter().any(|(_, (_, w))| *w == 0));
        }
    }

    /// One worker that takes every queued job and keeps them in flight while it takes more:
    /// with few jobs in flight it would hold all of them, and the run must still finish.
    #[test]
    fn a_worker_holding_every_job_in_flight_finishes() {
        for max_in_flight in [1, 2, 3] {
            let worker = Squarer {
                overlap: true,
                group: true,
                delay_ms: 1,
                ..Squarer::new("w")
            };
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut c = Collect::default();
                let report = run(source(300), vec![worker], max_in_flight, &mut c);
                let _ = tx.send((report.map(|r| r.computed), c));
            });
            let (report, c) = rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("deadlock with at most {max_in_flight} in flight"));
            assert_eq!(report.unwrap(), [240]);
            check_order(&c, 300);
        }
    }

    #[test]
    fn a_failed_worker_hands_its_jobs_to_the_others() {
        for (overlap, group) in [(false, false), (true, false), (true, true)] {
            let mut bad = Squarer::new("bad");
            bad.fail_at = Some(4);
            bad.overlap = overlap;
            bad.group = group;
            let mut good = Squarer::new("good");
            good.delay_ms = 1;
            let mut c = Collect::default();
            let report = run(source(100), vec![bad, good], 4, &mut c).unwrap();
            check_order(&c, 100);
            assert_eq!(report.failed_workers, ["bad"]);
            assert!(report.retried >= 1);
        }
    }

    #[test]
    fn failure_of_the_last_worker_ends_the_run() {
        let mut bad = Squarer::new("only");
        bad.fail_at = Some(3);
        let mut c = Collect::default();
        let err = run(source(50), vec![bad], 4, &mut c).unwrap_err();
        assert!(
            format!("{err:#}").contains("only failed: injected failure"),
            "{err:#}"
        );
        // Whatever was written came in order, with no gap.
        for (i, (p, _)) in c.in_order.iter().enumerate() {
            assert_eq!(*p, i as u64);
        }
    }

    #[test]
    fn a_job_failing_everywhere_ends_the_run() {
        let workers: Vec<Squarer> = (0..3)
            .map(|i| {
                let mut w = Squarer::new(&format!("w{i}"));
                w.fail_at = Some(1);
                w
            })
            .collect();
        let mut c = Collect::default();
        let err = run(source(20), workers, 1, &mut c).unwrap_err();
        assert!(format!("{err:#}").contains("injected failure"), "{err:#}");
    }

    #[test]
    fn source_and_handler_errors_end_the_run() {
        let (tx, rx) = bounded(4);
        tx.send(Ok(Item::Compute(2))).unwrap();
        tx.send(Err(anyhow!("bad record in input"))).unwrap();
        drop(tx);
        let mut c = Collect::default();
        let err = run(rx, vec![Squarer::new("w")], 4, &mut c).unwrap_err();
        assert!(err.to_string().contains("bad record"), "{err}");

        let mut c = Collect {
            fail_in_order_at: Some(7),
            ..Default::default()
        };
        let err = run(source(30), vec![Squarer::new("w")], 4, &mut c).unwrap_err();
        assert!(err.to_string().contains("writer failed"), "{err}");
        assert_eq!(c.in_order.len(), 7);
    }
}
