"""The "Where to correct" section: the uncertainty overlay and the list of the most uncertain slices.

A section in the sense of `widget.SECTIONS`. It shows the panel's ``lastUncertainty`` (an
`uncertainty.CaseUncertainty`, set after Apply with "Save uncertainty" and when a batch row is loaded);
the decisions are in `uncertainty` (tested headless).
"""
from __future__ import annotations

import slicer

from AutoSegSlicer.segment import uncertainty
from AutoSegSlicer.common.slots import guarded, restore_cursor


class UncertaintySection:
    def __init__(self, panel):
        self.panel = panel
        self.ui = panel.ui
        self.current = None     # CaseUncertainty shown
        self.background = None  # the volume it belongs to
        self.entries = []       # [(text, ras)] in the list's order

    def setup(self):
        self.ui.showUncertaintyCheckBox.connect("toggled(bool)", self.onShowToggled)
        self.ui.uncertaintyOpacitySlider.connect("valueChanged(int)", self.onOpacityChanged)
        self.ui.uncertainSlicesListWidget.connect("currentRowChanged(int)", self.onSliceChosen)

    def cleanup(self):
        pass

    def recover(self):
        restore_cursor()
        self.ui.showUncertaintyCheckBox.checked = False

    def onSegmentationCreated(self, node):
        """After Apply: show what the run left (nothing without "Save uncertainty")."""
        volume = self.panel.logic.source_volume(node) if node is not None else None
        self.showCase(self.panel.lastUncertainty, volume)

    def showCase(self, found, volume):
        """Fill the list from ``found`` (a CaseUncertainty or None); keep the overlay on if it was on."""
        self.current, self.background = found, volume
        self.entries = uncertainty.slice_entries(found.row) if found is not None else []
        self.ui.uncertainSlicesListWidget.clear()
        for text, _ in self.entries:
            self.ui.uncertainSlicesListWidget.addItem(text)
        if found is None or found.volume is None:
            self.ui.uncertaintyInfoLabel.text = ('Segment with "Save uncertainty" (Advanced) to see where the model '
                                                 'is unsure.')
        else:
            mean = found.row.get("mean_uncertainty")
            mean_text = f"mean uncertainty {mean:.3f}; " if isinstance(mean, (int, float)) else ""
            self.ui.uncertaintyInfoLabel.text = (f"{found.volume.GetName()}: {mean_text}{len(self.entries)} most "
                                                 f"uncertain slices below (click one to go there).")
        if self.ui.showUncertaintyCheckBox.checked:
            self.onShowToggled(True)

    @guarded("Showing the uncertainty")
    def onShowToggled(self, checked):
        if not checked:
            uncertainty.hide_overlay()
            return
        if self.current is None or self.current.volume is None:
            self.ui.showUncertaintyCheckBox.checked = False   # nothing to show: the label above says why
            return
        uncertainty.show_overlay(self.background, self.current.volume,
                                 opacity=self.ui.uncertaintyOpacitySlider.value / 100.0)

    @guarded("Changing the overlay's opacity")
    def onOpacityChanged(self, value):
        if self.ui.showUncertaintyCheckBox.checked and self.current is not None and self.current.volume is not None:
            slicer.util.setSliceViewerLayers(foregroundOpacity=float(value) / 100.0)

    @guarded("Moving to the slice")
    def onSliceChosen(self, row):
        if 0 <= row < len(self.entries):
            uncertainty.jump_to(slicer.mrmlScene, self.entries[row][1])
