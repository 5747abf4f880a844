//! Small bar charts drawn on the server as inline SVG: no script, no asset.

/// One bar: where it is drawn, and what it says.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Bar {
    pub(super) x: u32,
    pub(super) y: u32,
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) label: String,
    /// The value as text (the bar's title, read out by screen readers).
    pub(super) value: String,
}

/// A bar chart of labelled values, its bars scaled to the largest.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct BarChart {
    pub(super) title: String,
    pub(super) width: u32,
    pub(super) height: u32,
    /// Where the bars stand (above the labels).
    pub(super) base: u32,
    pub(super) bars: Vec<Bar>,
}

const WIDTH: u32 = 320;
const HEIGHT: u32 = 140;
const LABELS: u32 = 20;
const VALUES: u32 = 16;
const MAX_BAR: u32 = 48;

impl BarChart {
    /// `values` as bars from left to right; `show` writes a value as text.
    pub(super) fn new(
        title: &str,
        values: &[(String, f64)],
        show: impl Fn(f64) -> String,
    ) -> BarChart {
        let base = HEIGHT - LABELS;
        let largest = values.iter().map(|(_, v)| *v).fold(0.0_f64, f64::max);
        let slot = WIDTH / (values.len().max(1) as u32);
        let bars = values
            .iter()
            .enumerate()
            .map(|(i, (label, value))| {
                let share = if largest > 0.0 { value / largest } else { 0.0 };
                // Room above the tallest bar for its value.
                let height = (share * f64::from(base - VALUES)).round() as u32;
                let width = (slot * 3 / 4).clamp(1, MAX_BAR);
                Bar {
                    x: i as u32 * slot + (slot - width) / 2,
                    y: base - height,
                    width,
                    height,
                    label: label.clone(),
                    value: show(*value),
                }
            })
            .collect();
        BarChart {
            title: title.to_string(),
            width: WIDTH,
            height: HEIGHT,
            base,
            bars,
        }
    }

    /// Whether every bar is zero (the chart then says so instead).
    pub(super) fn is_empty(&self) -> bool {
        self.bars.iter().all(|b| b.height == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_scaled_to_the_largest() {
        let values = [("a".to_string(), 1.0), ("b".into(), 4.0), ("c".into(), 0.0)];
        let chart = BarChart::new("t", &values, |v| format!("{v}"));
        let heights: Vec<u32> = chart.bars.iter().map(|b| b.height).collect();
        assert_eq!(heights, [26, 104, 0]);
        assert!(chart.bars.iter().all(|b| b.y + b.height == chart.base));
        assert!(chart.bars.iter().all(|b| b.x + b.width <= chart.width));
        assert!(!chart.is_empty());
        assert!(BarChart::new("t", &[], |v| format!("{v}")).is_empty());
    }
}
