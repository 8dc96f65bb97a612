//! Running one fallible job per item on a few threads, for work that is mostly system calls
//! (hashing or copying thousands of small files), where one core would otherwise wait.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Below this many items per thread, starting a thread costs more than it saves.
const MIN_ITEMS_PER_THREAD: usize = 64;

/// `f(state, item)` for every item, on up to `max_threads` threads (each with its own
/// `init()` state), stopping at the first error, which is returned. Results come back in
/// item order.
pub fn try_map<T, S, R, E>(
    items: &[T],
    max_threads: usize,
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, &T) -> Result<R, E> + Sync,
) -> Result<Vec<R>, E>
where
    T: Sync,
    R: Send,
    E: Send,
{
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, max_threads.max(1));
    let threads = threads.min(items.len().div_ceil(MIN_ITEMS_PER_THREAD)).max(1);
    let parts: Vec<Result<Vec<(usize, R)>, E>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut state = init();
                    let mut out = Vec::new();
                    while !failed.load(Ordering::Relaxed) {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(k) else { break };
                        match f(&mut state, item) {
                            Ok(r) => out.push((k, r)),
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                return Err(e);
                            }
                        }
                    }
                    Ok(out)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    let mut slots: Vec<Option<R>> = std::iter::repeat_with(|| None).take(items.len()).collect();
    for part in parts {
        for (k, r) in part? {
            slots[k] = Some(r);
        }
    }
    Ok(slots.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_in_order_and_the_first_error_stops_the_rest() {
        let items: Vec<u32> = (0..1000).collect();
        let doubled = try_map(
            &items,
            4,
            || 0u32,
            |calls, &i| {
                *calls += 1;
                Ok::<_, String>(i * 2)
            },
        )
        .unwrap();
        assert_eq!(doubled, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        let err = try_map(&items, 4, || (), |_, &i| if i == 500 { Err(format!("bad {i}")) } else { Ok(i) });
        assert_eq!(err.unwrap_err(), "bad 500");
        assert!(try_map(&[] as &[u32], 4, || (), |_, &i| Ok::<_, ()>(i)).unwrap().is_empty());
    }
}
