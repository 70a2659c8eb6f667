//! The loss curve of a run as an SVG image: training loss, validation loss
//! and the learning rate (right axis) against the step.

use ft_trainer::MetricsRecord;
use plotters::prelude::*;
use std::path::Path;

/// Draws `records` into `path` (SVG).
pub fn loss_curve(records: &[MetricsRecord], path: &Path) -> anyhow::Result<()> {
    let mut train = Vec::new();
    let mut valid = Vec::new();
    let mut lr = Vec::new();
    for record in records {
        match record {
            MetricsRecord::Train(m) if !m.skipped && m.loss.is_finite() => {
                train.push((m.step as f64, m.loss));
                lr.push((m.step as f64, m.lr));
            }
            MetricsRecord::Eval(m) if m.loss.is_finite() => valid.push((m.step as f64, m.loss)),
            _ => {}
        }
    }
    if train.is_empty() {
        anyhow::bail!("no finite training loss to plot");
    }
    let last_step = train.iter().chain(&valid).map(|p| p.0).fold(1.0, f64::max);
    let max_loss = train.iter().chain(&valid).map(|p| p.1).fold(0.0, f64::max) * 1.05;
    let max_lr = lr.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-12) * 1.05;
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("mlx-ft: loss and learning rate", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .right_y_label_area_size(70)
        .build_cartesian_2d(0.0..last_step, 0.0..max_loss.max(1e-6))?
        .set_secondary_coord(0.0..last_step, 0.0..max_lr);
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss")
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("learning rate")
        .y_label_formatter(&|v| format!("{v:.1e}"))
        .draw()?;
    chart
        .draw_series(LineSeries::new(train, BLUE.stroke_width(2)))?
        .label("training loss")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    if !valid.is_empty() {
        chart
            .draw_series(LineSeries::new(valid.clone(), RED.stroke_width(2)))?
            .label("validation loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
        chart.draw_series(valid.into_iter().map(|p| Circle::new(p, 4, RED.filled())))?;
    }
    chart
        .draw_secondary_series(LineSeries::new(lr, BLACK.mix(0.4)))?
        .label("learning rate")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.4)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}
