//! Group commit for backends that pay a round trip per call: concurrent calls go out as one.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::StoreError;

/// Calls that may wait while a batch is out; beyond this, callers wait to queue (pressure goes
/// back to the sockets instead of an unbounded queue growing while the backend is slow).
const QUEUE_CAPACITY: usize = 4096;

type Reply<Response> = oneshot::Sender<Result<Response, StoreError>>;

/// A call waiting for its batch.
struct Queued<Request, Response> {
    request: Request,
    reply: Reply<Response>,
    queued_at: Instant,
}

/// Runs calls in batches. While one batch is out, new calls queue; the next batch takes all of
/// them (up to `max_batch`). A lone call goes out at once, so coalescing adds no delay when the
/// backend is idle, and under load one round trip serves many callers.
///
/// The batch function answers the calls of a batch one for one, in queue order, so each call
/// succeeds as if made alone; a batch that fails fails all of its calls. A call that waited in
/// the queue longer than `wait_limit` (the backend is slow or gone) fails without being sent,
/// so no caller waits much over twice that, whatever the queue holds; a call whose caller
/// stopped waiting is not sent.
pub struct Coalescer<Request, Response> {
    queue: mpsc::Sender<Queued<Request, Response>>,
}

impl<Request, Response> Coalescer<Request, Response>
where
    Request: Send + 'static,
    Response: Send + 'static,
{
    /// Spawns the task that runs the batches (call within a tokio runtime). It ends when the
    /// coalescer is dropped.
    pub fn spawn<RunBatch, Answers>(
        max_batch: usize,
        wait_limit: Duration,
        run_batch: RunBatch,
    ) -> Self
    where
        RunBatch: Fn(Vec<Request>) -> Answers + Send + 'static,
        Answers: Future<Output = Result<Vec<Response>, StoreError>> + Send + 'static,
    {
        let (queue, waiting) = mpsc::channel(QUEUE_CAPACITY);
        let limits = BatchLimits {
            max_batch: max_batch.max(1),
            wait_limit,
        };
        tokio::spawn(run_batches(waiting, limits, run_batch));
        Coalescer { queue }
    }

    /// Queues one call and waits for its answer.
    pub async fn call(&self, request: Request) -> Result<Response, StoreError> {
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            request,
            reply,
            queued_at: Instant::now(),
        };
        self.queue
            .send(queued)
            .await
            .map_err(|_| batcher_stopped())?;
        answer.await.map_err(|_| batcher_stopped())?
    }
}

struct BatchLimits {
    max_batch: usize,
    wait_limit: Duration,
}

fn batcher_stopped() -> StoreError {
    StoreError::Unavailable("the batching task stopped".into())
}

async fn run_batches<Request, Response, RunBatch, Answers>(
    mut waiting: mpsc::Receiver<Queued<Request, Response>>,
    limits: BatchLimits,
    run_batch: RunBatch,
) where
    RunBatch: Fn(Vec<Request>) -> Answers,
    Answers: Future<Output = Result<Vec<Response>, StoreError>>,
{
    let mut taken = Vec::with_capacity(limits.max_batch);
    while waiting.recv_many(&mut taken, limits.max_batch).await > 0 {
        let now = Instant::now();
        let mut requests = Vec::with_capacity(taken.len());
        let mut replies = Vec::with_capacity(taken.len());
        for queued in taken.drain(..) {
            if queued.reply.is_closed() {
                continue;
            }
            if now.duration_since(queued.queued_at) > limits.wait_limit {
                let _ = queued.reply.send(Err(waited_too_long(limits.wait_limit)));
                continue;
            }
            requests.push(queued.request);
            replies.push(queued.reply);
        }
        if requests.is_empty() {
            continue;
        }
        let calls = replies.len();
        // A panic would otherwise end the task, and every later call with it.
        let answers = AssertUnwindSafe(run_batch(requests)).catch_unwind().await;
        match answers {
            Ok(Ok(responses)) if responses.len() == calls => {
                for (reply, response) in replies.into_iter().zip(responses) {
                    // A caller that stopped waiting (its socket closed) needs no answer.
                    let _ = reply.send(Ok(response));
                }
            }
            Ok(Ok(responses)) => {
                let error = StoreError::Unavailable(format!(
                    "a batch of {calls} calls got {} answers",
                    responses.len()
                ));
                fail_all(replies, &error);
            }
            Ok(Err(error)) => fail_all(replies, &error),
            Err(_) => {
                tracing::error!(calls, "a batched backend call panicked");
                fail_all(
                    replies,
                    &StoreError::Unavailable("the batch panicked".into()),
                );
            }
        }
    }
}

fn waited_too_long(wait_limit: Duration) -> StoreError {
    StoreError::Unavailable(format!(
        "waited over {} ms for the backend",
        wait_limit.as_millis()
    ))
}

fn fail_all<Response>(replies: Vec<Reply<Response>>, error: &StoreError) {
    for reply in replies {
        let _ = reply.send(Err(error.clone()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parking_lot::Mutex;
    use tokio::sync::Semaphore;

    use super::*;

    const WAIT_LIMIT: Duration = Duration::from_secs(1);

    /// A batch function that records each batch, answers `request * 10`, and waits for a permit
    /// first, so a test decides when batches finish.
    fn gated_doubler(
        gate: Arc<Semaphore>,
        batches: Arc<Mutex<Vec<Vec<u32>>>>,
    ) -> Coalescer<u32, u32> {
        Coalescer::spawn(3, WAIT_LIMIT, move |requests: Vec<u32>| {
            let (gate, batches) = (gate.clone(), batches.clone());
            async move {
                batches.lock().push(requests.clone());
                gate.acquire().await.expect("gate open").forget();
                Ok(requests.into_iter().map(|request| request * 10).collect())
            }
        })
    }

    #[tokio::test]
    async fn calls_that_wait_for_a_batch_go_out_together_in_order() {
        let (coalescer, gate, batches, first) = first_batch_out().await;
        let mut later = Vec::new();
        for request in 2..=6 {
            // In order: each call reaches the queue before the next is spawned.
            later.push(queued_call(&coalescer, request).await);
        }
        gate.add_permits(3);
        assert_eq!(first.await.unwrap().unwrap(), 10);
        let answers: Vec<u32> = futures_util::future::join_all(later)
            .await
            .into_iter()
            .map(|answer| answer.unwrap().unwrap())
            .collect();
        assert_eq!(
            answers,
            vec![20, 30, 40, 50, 60],
            "each caller gets its own answer"
        );
        assert_eq!(
            *batches.lock(),
            vec![vec![1], vec![2, 3, 4], vec![5, 6]],
            "a lone call goes alone; calls that waited share batches of at most max_batch"
        );
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_calls_and_the_next_batch_runs() {
        let coalescer = Coalescer::spawn(8, WAIT_LIMIT, |requests: Vec<u32>| async move {
            if requests.contains(&0) {
                Err(StoreError::Unavailable("zero refused".into()))
            } else {
                Ok(requests)
            }
        });
        let refused = coalescer.call(0).await.unwrap_err();
        assert_eq!(refused.to_string(), "backend unavailable: zero refused");
        assert_eq!(coalescer.call(7).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn a_batch_answering_the_wrong_number_of_calls_is_an_error_not_a_mixup() {
        let coalescer = Coalescer::spawn(8, WAIT_LIMIT, |_requests: Vec<u32>| async move {
            Ok(Vec::<u32>::new())
        });
        let error = coalescer.call(1).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "backend unavailable: a batch of 1 calls got 0 answers"
        );
    }

    /// Spawns a call and lets it reach the queue.
    async fn queued_call(
        coalescer: &Arc<Coalescer<u32, u32>>,
        request: u32,
    ) -> tokio::task::JoinHandle<Result<u32, StoreError>> {
        let coalescer = coalescer.clone();
        let call = tokio::spawn(async move { coalescer.call(request).await });
        tokio::task::yield_now().await;
        call
    }

    type GatedRun = (
        Arc<Coalescer<u32, u32>>,
        Arc<Semaphore>,
        Arc<Mutex<Vec<Vec<u32>>>>,
        tokio::task::JoinHandle<Result<u32, StoreError>>,
    );

    /// A gated coalescer with call 1 out (its batch waiting for the gate).
    async fn first_batch_out() -> GatedRun {
        let gate = Arc::new(Semaphore::new(0));
        let batches = Arc::new(Mutex::new(Vec::new()));
        let coalescer = Arc::new(gated_doubler(gate.clone(), batches.clone()));
        let first = queued_call(&coalescer, 1).await;
        while batches.lock().is_empty() {
            tokio::task::yield_now().await;
        }
        (coalescer, gate, batches, first)
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_waited_over_the_limit_fails_without_being_sent() {
        let (coalescer, gate, batches, first) = first_batch_out().await;
        let late = queued_call(&coalescer, 2).await;
        tokio::time::advance(WAIT_LIMIT * 2).await;
        gate.add_permits(2);
        assert_eq!(first.await.unwrap().unwrap(), 10);
        assert_eq!(
            late.await.unwrap().unwrap_err().to_string(),
            "backend unavailable: waited over 1000 ms for the backend"
        );
        assert_eq!(*batches.lock(), vec![vec![1]], "the late call was not sent");
    }

    #[tokio::test]
    async fn a_call_whose_caller_stopped_waiting_is_not_sent() {
        let (coalescer, gate, batches, first) = first_batch_out().await;
        let abandoned = queued_call(&coalescer, 2).await;
        abandoned.abort();
        assert!(abandoned.await.unwrap_err().is_cancelled());
        let third = queued_call(&coalescer, 3).await;
        gate.add_permits(2);
        assert_eq!(first.await.unwrap().unwrap(), 10);
        assert_eq!(third.await.unwrap().unwrap(), 30);
        assert_eq!(*batches.lock(), vec![vec![1], vec![3]]);
    }

    #[tokio::test]
    async fn a_batch_that_panics_fails_its_calls_and_the_batching_goes_on() {
        let coalescer = Coalescer::spawn(8, WAIT_LIMIT, |requests: Vec<u32>| async move {
            if requests.contains(&0) {
                panic!("zero is not a request");
            }
            Ok(requests)
        });
        assert_eq!(
            coalescer.call(0).await.unwrap_err().to_string(),
            "backend unavailable: the batch panicked"
        );
        assert_eq!(coalescer.call(5).await.unwrap(), 5);
    }
}
